"""biformer: Bi-Level Routing Attention and the BiFormer backbones for PyTorch and timm.

``import biformer`` registers the BiFormer models with timm (``timm.create_model(
"biformer_small", pretrained=True)``); ``biformer.load_checkpoint`` loads official or own
checkpoints into them.
"""

__version__ = "0.1.0"

from . import layers, models, ops  # noqa: E402
from .checkpoint import CheckpointError, load_checkpoint  # noqa: E402

__all__ = ["CheckpointError", "__version__", "layers", "load_checkpoint", "models", "ops"]
