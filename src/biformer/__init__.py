"""biformer: Bi-Level Routing Attention and the BiFormer backbones for PyTorch and timm."""

__version__ = "0.1.0"

from . import layers, ops  # noqa: E402

__all__ = ["__version__", "layers", "ops"]
