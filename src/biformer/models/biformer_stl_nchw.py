"""BiFormer-STL-nchw: the Swin-T-layout BiFormer built on the refactored NCHW attention.

Paper: "BiFormer: Vision Transformer with Bi-Level Routing Attention", Zhu et al., CVPR 2023
(https://arxiv.org/abs/2303.08810); original code https://github.com/rayleizhu/BiFormer (MIT).

Same stem, merging and final BatchNorm as ``biformer_stl``; the blocks stay NCHW end to end:
``LayerNorm2d -> BRA2d`` (``AttentionLePE2d`` in the last stage) and ``LayerNorm2d -> 1x1 conv
MLP``. ``BRA2d`` splits maps of any size (it pads internally) unless ``auto_pad=False``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from timm.layers import LayerNorm2d
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from torch import Tensor, nn

from ..layers import AttentionLePE2d, BRA2d
from .base import checkpoint_filter_fn, make_drop_path, register_layout
from .biformer import _cfg
from .biformer_stl import BiFormerSTL
from .pretrained import pretrained_kwargs

__all__ = ["BiFormerSTLNCHW", "BiFormerSTLNCHWBlock"]


class BiFormerSTLNCHWBlock(nn.Module):
    """``x + attn(norm1(x))``, then ``x + mlp(norm2(x))``; ``[B, dim, H, W]`` in and out.

    ``topk > 0``: ``BRA2d`` with ``dim // head_dim`` heads; ``topk`` -1 (the official value) or
    -2: global attention with LePE (``AttentionLePE2d``, 8 heads).
    """

    def __init__(
        self,
        dim: int,
        *,
        topk: int,
        n_win: int,
        mlp_ratio: float = 4.0,
        head_dim: int = 32,
        side_dwconv: int = 5,
        drop_path: float = 0.0,
        auto_pad: bool = True,
    ):
        super().__init__()
        hidden = int(mlp_ratio * dim)
        self.norm1 = LayerNorm2d(dim, eps=1e-6)
        if topk > 0:
            self.attn: nn.Module = BRA2d(dim, num_heads=dim // head_dim, n_win=n_win, topk=topk,
                                         side_dwconv=side_dwconv, auto_pad=auto_pad)
        elif topk in (-1, -2):
            self.attn = AttentionLePE2d(dim, side_dwconv=side_dwconv)
        else:
            raise ValueError(
                f"topk={topk} is not supported: use a positive number of routed regions or -1 "
                "(global attention with LePE, the official last stage)"
            )
        self.norm2 = LayerNorm2d(dim, eps=1e-6)
        self.mlp = nn.Sequential(nn.Conv2d(dim, hidden, kernel_size=1), nn.GELU(),
                                 nn.Conv2d(hidden, dim, kernel_size=1))
        self.drop_path = make_drop_path(drop_path)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x)))  # B, C, H, W
        x = x + self.drop_path(self.mlp(self.norm2(x)))
        return x


class BiFormerSTLNCHW(BiFormerSTL):
    """BiFormer-STL with NCHW blocks (``BRA2d``); arguments as ``biformer.models.BiFormerSTL``.

    ``auto_pad`` defaults to True here (``BRA2d`` handles any size, as the official module) and
    the last stage's ``topk`` to -1 (``AttentionLePE2d``).
    Shape: ``forward``: ``[B, in_chans, H, W]`` -> ``[B, num_classes]``.
    """

    block_cls = BiFormerSTLNCHWBlock
    channels_last_blocks = False

    def __init__(
        self,
        *args: Any,
        topks: int | Sequence[int] = (1, 4, 16, -1),
        auto_pad: bool = True,
        **kwargs: Any,
    ):
        super().__init__(*args, topks=topks, auto_pad=auto_pad, **kwargs)


def _create_biformer_stl_nchw(variant: str, pretrained: bool = False,
                              **kwargs: Any) -> BiFormerSTLNCHW:
    return build_model_with_cfg(
        BiFormerSTLNCHW,
        variant,
        pretrained,
        pretrained_filter_fn=checkpoint_filter_fn,
        feature_cfg=dict(flatten_sequential=True, out_indices=(0, 1, 2, 3)),
        **pretrained_kwargs(variant, pretrained, kwargs),
    )


default_cfgs = generate_default_cfgs({
    "biformer_stl_nchw.in1k": _cfg(
        url="https://api.onedrive.com/v1.0/shares/s!AkBbczdRlZvChWYrKbWbMgqd2Ai0/root/content"
    ),
})

_STL = dict(depths=(2, 2, 6, 2), dims=(96, 192, 384, 768))
register_layout("biformer_stl_nchw", "biformer_stl_nchw", _STL["depths"], _STL["dims"])


@register_model
def biformer_stl_nchw(pretrained: bool = False, **kwargs: Any) -> BiFormerSTLNCHW:
    """BiFormer-STL with NCHW attention: 28.4 M parameters, 4.6 GMACs at 224x224."""
    return _create_biformer_stl_nchw("biformer_stl_nchw", pretrained, **dict(_STL, **kwargs))
