"""BiFormer models for timm: importing this package registers them with ``timm.create_model``.

Registered: ``biformer_tiny``, ``biformer_small``, ``biformer_base`` (official T/S/B),
``biformer_stl`` and ``biformer_stl_nchw`` (Swin-T-layout ablation models), each with an
``.in1k`` pretrained config pointing at the official weights. ``MODEL_SPECS`` holds the paper's
numbers and the training drop path of each; ``MODEL_NAMES`` lists them in registration order.
"""

from .base import BiFormerBase
from .biformer import BiFormer, BiFormerBlock, biformer_base, biformer_small, biformer_tiny
from .biformer_stl import BiFormerSTL, BiFormerSTLBlock, biformer_stl
from .biformer_stl_nchw import BiFormerSTLNCHW, BiFormerSTLNCHWBlock, biformer_stl_nchw
from .blocks import GLOBAL, GLOBAL_LEPE, ResidualBlock
from .layout import checkpoint_filter_fn, describe_layout, known_layouts, strip_wrapper_prefixes
from .specs import MODEL_SPECS, ModelSpec
from .stages import BiFormerStage

MODEL_NAMES: tuple[str, ...] = tuple(MODEL_SPECS)

__all__ = [
    "GLOBAL",
    "GLOBAL_LEPE",
    "MODEL_NAMES",
    "MODEL_SPECS",
    "BiFormer",
    "BiFormerBase",
    "BiFormerBlock",
    "BiFormerSTL",
    "BiFormerSTLBlock",
    "BiFormerSTLNCHW",
    "BiFormerSTLNCHWBlock",
    "BiFormerStage",
    "ModelSpec",
    "ResidualBlock",
    "biformer_base",
    "biformer_small",
    "biformer_stl",
    "biformer_stl_nchw",
    "biformer_tiny",
    "checkpoint_filter_fn",
    "describe_layout",
    "known_layouts",
    "strip_wrapper_prefixes",
]
