"""BiFormer-STL: Bi-Level Routing Attention in the Swin-T layout (the paper's ablation model).

Paper: "BiFormer: Vision Transformer with Bi-Level Routing Attention", Zhu et al., CVPR 2023
(https://arxiv.org/abs/2303.08810); original code https://github.com/rayleizhu/BiFormer (MIT).

Swin-T layout: 4x4 patch-embedding conv + BatchNorm, depths 2-2-6-2, dims 96-192-384-768,
BatchNorm + 2x2 stride-2 conv merging, MLP ratio 4, no positional conv. Blocks
(``x + attn(norm1(x))``, ``x + mlp(norm2(x))``) run on NHWC tensors; each stage permutes once on
entry and once on exit, as the official ``BasicLayer`` does. Official keys
``downsample_layers.{i}`` are renamed by ``checkpoint_filter_fn``; ``stages.{i}.blocks.{j}``
already match.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch.nn.functional as F
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from torch import Tensor, nn

from .base import (
    BiFormerBase,
    BiFormerStage,
    checkpoint_filter_fn,
    drop_path_rates,
    make_drop_path,
    nhwc_attention,
    register_layout,
    stage_strides,
    stage_tuple,
)
from .biformer import _cfg
from .pretrained import pretrained_kwargs

__all__ = ["BiFormerSTL", "BiFormerSTLBlock", "patch_merging"]


class _SameSizeConv2x2(nn.Conv2d):
    """2x2 stride-1 conv that keeps the map size (one zero row/column at the bottom/right)."""

    def forward(self, x: Tensor) -> Tensor:
        return super().forward(F.pad(x, (0, 1, 0, 1)))


def patch_merging(in_dim: int, out_dim: int, stride: int) -> nn.Sequential:
    """BatchNorm then a 2x2 conv (NCHW): stride 2 halves the map; stride 1 (``output_stride``
    < 32) keeps its size. Parameter names ``0.*`` (norm) and ``1.*`` (conv) either way."""
    conv_cls = nn.Conv2d if stride == 2 else _SameSizeConv2x2
    return nn.Sequential(nn.BatchNorm2d(in_dim), conv_cls(in_dim, out_dim, kernel_size=2,
                                                          stride=stride))


class BiFormerSTLBlock(nn.Module):
    """``x + attn(norm1(x))``, then ``x + mlp(norm2(x))``; ``[B, H, W, dim]`` in and out."""

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
        auto_pad: bool = False,
    ):
        super().__init__()
        hidden = int(mlp_ratio * dim)
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = nhwc_attention(dim, topk=topk, n_win=n_win, head_dim=head_dim,
                                   side_dwconv=side_dwconv, auto_pad=auto_pad)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))
        self.drop_path = make_drop_path(drop_path)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x)))  # B, H, W, C
        x = x + self.drop_path(self.mlp(self.norm2(x)))
        return x


class BiFormerSTL(BiFormerBase):
    """BiFormer-STL backbone and classifier (NHWC blocks, legacy BRA).

    Arguments as ``biformer.models.BiFormer`` (``mlp_ratio`` defaults to 4); the stem is a
    4x4 stride-4 conv with BatchNorm and the merging layers are BatchNorm + 2x2 conv. Subclasses
    swap the block (``block_cls``) and its layout (``channels_last_blocks``).

    Shape: ``forward``: ``[B, in_chans, H, W]`` -> ``[B, num_classes]``.
    """

    block_cls: type[nn.Module] = BiFormerSTLBlock
    channels_last_blocks = True

    def __init__(
        self,
        depths: Sequence[int] = (2, 2, 6, 2),
        dims: Sequence[int] = (96, 192, 384, 768),
        *,
        in_chans: int = 3,
        num_classes: int = 1000,
        global_pool: str = "avg",
        mlp_ratio: float = 4.0,
        head_dim: int = 32,
        topks: int | Sequence[int] = (1, 4, 16, -2),
        n_win: int | Sequence[int] = 7,
        auto_pad: bool = False,
        side_dwconv: int = 5,
        output_stride: int = 32,
        drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
    ):
        super().__init__()
        depths = stage_tuple(depths, "depths")
        dims = stage_tuple(dims, "dims")
        topks = stage_tuple(topks, "topks")
        n_wins = stage_tuple(n_win, "n_win")
        strides = (1, *stage_strides(output_stride))
        dpr = drop_path_rates(depths, drop_path_rate)

        self.stem = nn.Sequential(
            nn.Conv2d(in_chans, dims[0], kernel_size=4, stride=4), nn.BatchNorm2d(dims[0])
        )
        stages = []
        for i in range(4):
            downsample = nn.Identity() if i == 0 else patch_merging(dims[i - 1], dims[i],
                                                                    strides[i])
            blocks = [
                self.block_cls(dims[i], topk=topks[i], n_win=n_wins[i], mlp_ratio=mlp_ratio,
                               head_dim=head_dim, side_dwconv=side_dwconv,
                               drop_path=dpr[i][j], auto_pad=auto_pad)
                for j in range(depths[i])
            ]
            stages.append(BiFormerStage(downsample, blocks,
                                        channels_last_blocks=self.channels_last_blocks))
        self.stages = nn.Sequential(*stages)
        self._init_head(dims, num_classes=num_classes, global_pool=global_pool,
                        drop_rate=drop_rate, in_chans=in_chans, output_stride=output_stride)
        self.apply(self._init_weights)


def _create_biformer_stl(variant: str, pretrained: bool = False, **kwargs: Any) -> BiFormerSTL:
    return build_model_with_cfg(
        BiFormerSTL,
        variant,
        pretrained,
        pretrained_filter_fn=checkpoint_filter_fn,
        feature_cfg=dict(flatten_sequential=True, out_indices=(0, 1, 2, 3)),
        **pretrained_kwargs(variant, pretrained, kwargs),
    )


# The latest official code points at this OneDrive share; older revisions (and the README) at
# https://matix.li/4e9034a91a23, a host that no longer serves the file.
default_cfgs = generate_default_cfgs({
    "biformer_stl.in1k": _cfg(
        url="https://api.onedrive.com/v1.0/shares/s!AkBbczdRlZvChSf-m7ujkvx9lIQ1/root/content"
    ),
})

_STL = dict(depths=(2, 2, 6, 2), dims=(96, 192, 384, 768))
register_layout("biformer_stl", "biformer_stl", _STL["depths"], _STL["dims"])


@register_model
def biformer_stl(pretrained: bool = False, **kwargs: Any) -> BiFormerSTL:
    """BiFormer-STL (Swin-T layout): 28.4 M parameters, 4.6 GMACs at 224x224, 82.7% top-1."""
    return _create_biformer_stl("biformer_stl", pretrained, **dict(_STL, **kwargs))
