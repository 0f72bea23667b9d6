"""nn.Modules built on the BRA operators: they project, then call ``biformer.ops``."""

from .attention import Attention, AttentionLePE, AttentionLePE2d
from .backend import set_backend
from .bra import BiLevelRoutingAttention, QKVLinear, TopkRouter
from .bra2d import BRA2d
from .taps import RoutingTap

__all__ = [
    "Attention",
    "AttentionLePE",
    "AttentionLePE2d",
    "BRA2d",
    "BiLevelRoutingAttention",
    "QKVLinear",
    "RoutingTap",
    "TopkRouter",
    "set_backend",
]
