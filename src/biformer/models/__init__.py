"""BiFormer models for timm: importing this package registers them with ``timm.create_model``.

Registered: ``biformer_tiny``, ``biformer_small``, ``biformer_base`` (official T/S/B),
``biformer_stl`` and ``biformer_stl_nchw`` (Swin-T-layout ablation models), each with an
``.in1k`` pretrained config pointing at the official weights.
"""

from .base import BiFormerBase, BiFormerStage, checkpoint_filter_fn
from .biformer import BiFormer, BiFormerBlock, biformer_base, biformer_small, biformer_tiny
from .biformer_stl import BiFormerSTL, BiFormerSTLBlock, biformer_stl
from .biformer_stl_nchw import BiFormerSTLNCHW, BiFormerSTLNCHWBlock, biformer_stl_nchw

MODEL_NAMES = (
    "biformer_tiny",
    "biformer_small",
    "biformer_base",
    "biformer_stl",
    "biformer_stl_nchw",
)

__all__ = [
    "MODEL_NAMES",
    "BiFormer",
    "BiFormerBase",
    "BiFormerBlock",
    "BiFormerSTL",
    "BiFormerSTLBlock",
    "BiFormerSTLNCHW",
    "BiFormerSTLNCHWBlock",
    "BiFormerStage",
    "biformer_base",
    "biformer_small",
    "biformer_stl",
    "biformer_stl_nchw",
    "biformer_tiny",
    "checkpoint_filter_fn",
]
