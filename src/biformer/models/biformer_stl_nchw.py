"""BiFormer-STL-nchw: the Swin-T-layout BiFormer built on the refactored NCHW attention.

Paper: "BiFormer: Vision Transformer with Bi-Level Routing Attention", Zhu et al., CVPR 2023
(https://arxiv.org/abs/2303.08810); original code https://github.com/rayleizhu/BiFormer (MIT).

Same stem, merging and final BatchNorm as ``biformer_stl``; the blocks stay NCHW end to end:
``LayerNorm2d -> BRA2d`` (``AttentionLePE2d`` in the last stage) and ``LayerNorm2d -> 1x1 conv
MLP``. ``BRA2d`` derives its regions from the map size, so any size runs.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from functools import partial
from typing import Any

from timm.layers import LayerNorm2d
from timm.models import generate_default_cfgs, register_model
from torch import nn

from ..layers import AttentionLePE2d, BRA2d
from .biformer_stl import BiFormerSTL
from .blocks import GLOBAL_LEPE, ResidualBlock, stage_attention
from .factory import build_biformer, default_cfg, onedrive_url
from .specs import model_spec

__all__ = ["NCHW_CODES", "BiFormerSTLNCHW", "BiFormerSTLNCHWBlock", "nchw_attention"]

# the official NCHW model writes its last stage (global attention with LePE) as topk -1
NCHW_CODES: Mapping[int, str] = {-1: GLOBAL_LEPE, -2: GLOBAL_LEPE}


def nchw_attention(dim: int, *, topk: int | str, n_win: int, head_dim: int, side_dwconv: int,
                   auto_pad: bool) -> nn.Module:
    """``BRA2d`` (``dim // head_dim`` heads) for ``topk > 0``; ``"global_lepe"`` (official -1
    or -2): ``AttentionLePE2d`` (8 heads). ``[B, dim, H, W]`` in and out."""
    attention = stage_attention(topk, NCHW_CODES, choices=(GLOBAL_LEPE,))
    if attention == GLOBAL_LEPE:
        return AttentionLePE2d(dim, side_dwconv=side_dwconv)
    return BRA2d(dim, num_heads=dim // head_dim, n_win=n_win, topk=attention,
                 side_dwconv=side_dwconv, auto_pad=auto_pad)


class BiFormerSTLNCHWBlock(ResidualBlock):
    """``x + attn(norm1(x))``, then ``x + mlp(norm2(x))``; ``[B, dim, H, W]`` in and out.

    ``LayerNorm2d`` norms, ``nchw_attention``, a 1x1-conv MLP; arguments as ``ResidualBlock``.
    """

    default_norm = partial(LayerNorm2d, eps=1e-6)
    make_attention = staticmethod(nchw_attention)

    @staticmethod
    def make_mlp(dim: int, hidden: int, act_layer: Callable[..., nn.Module],
                 **dd: Any) -> nn.Module:
        return nn.Sequential(nn.Conv2d(dim, hidden, kernel_size=1, **dd), act_layer(),
                             nn.Conv2d(hidden, dim, kernel_size=1, **dd))


class BiFormerSTLNCHW(BiFormerSTL):
    """BiFormer-STL with NCHW blocks (``BRA2d``); arguments as ``biformer.models.BiFormerSTL``.

    The last stage is ``"global_lepe"`` (``AttentionLePE2d``; the official config writes -1).
    Shape: ``forward``: ``[B, in_chans, H, W]`` -> ``[B, num_classes]``.
    """

    block_cls = BiFormerSTLNCHWBlock
    channels_last_blocks = False


default_cfgs = generate_default_cfgs({
    "biformer_stl_nchw.in1k": default_cfg(url=onedrive_url("s!AkBbczdRlZvChWYrKbWbMgqd2Ai0")),
})


@register_model
@model_spec(params_m=28.4, gmacs=4.6, top1=82.7, drop_path_rate=0.1)
def biformer_stl_nchw(pretrained: bool = False, **kwargs: Any) -> BiFormerSTLNCHW:
    """BiFormer-STL with NCHW attention: 28.4 M parameters, 4.6 GMACs at 224x224, 82.7% top-1."""
    model_args = dict(depths=(2, 2, 6, 2), dims=(96, 192, 384, 768))
    return build_biformer(BiFormerSTLNCHW, "biformer_stl_nchw", pretrained,
                          **dict(model_args, **kwargs))

