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
from timm.models import generate_default_cfgs, register_model
from torch import Tensor, nn

from .base import BiFormerBase
from .blocks import ResidualBlock
from .factory import build_biformer, default_cfg, onedrive_url
from .specs import model_spec

__all__ = ["BiFormerSTL", "BiFormerSTLBlock", "patch_merging"]


class _SameSizeConv2x2(nn.Conv2d):
    """2x2 stride-1 conv that keeps the map size (one zero row/column at the bottom/right)."""

    def forward(self, x: Tensor) -> Tensor:
        return super().forward(F.pad(x, (0, 1, 0, 1)))


def patch_merging(in_dim: int, out_dim: int, stride: int, **dd: Any) -> nn.Sequential:
    """BatchNorm then a 2x2 conv (NCHW): stride 2 halves the map; stride 1 (``output_stride``
    < 32) keeps its size. Parameter names ``0.*`` (norm) and ``1.*`` (conv) either way."""
    conv_cls = nn.Conv2d if stride == 2 else _SameSizeConv2x2
    return nn.Sequential(nn.BatchNorm2d(in_dim, **dd),
                         conv_cls(in_dim, out_dim, kernel_size=2, stride=stride, **dd))


class BiFormerSTLBlock(ResidualBlock):
    """``x + attn(norm1(x))``, then ``x + mlp(norm2(x))``; ``[B, H, W, dim]`` in and out.

    Arguments as ``biformer.models.blocks.ResidualBlock`` (MLP ratio 4).
    """


class BiFormerSTL(BiFormerBase):
    """BiFormer-STL backbone and classifier (NHWC blocks, legacy BRA).

    Arguments of ``BiFormerBase`` (``mlp_ratio`` defaults to 4); the stem is a 4x4 stride-4 conv
    with BatchNorm and the merging layers are BatchNorm + 2x2 conv. Subclasses swap the block
    (``block_cls``) and its layout (``channels_last_blocks``).

    Shape: ``forward``: ``[B, in_chans, H, W]`` -> ``[B, num_classes]``.
    """

    block_cls = BiFormerSTLBlock
    channels_last_blocks = True

    def __init__(self, depths: int | Sequence[int] = (2, 2, 6, 2),
                 dims: int | Sequence[int] = (96, 192, 384, 768), *, mlp_ratio: float = 4.0,
                 **kwargs: Any):
        super().__init__(depths, dims, mlp_ratio=mlp_ratio, **kwargs)

    def make_stem(self, in_chans: int, dim: int, *, act_layer: Any, device: Any,
                  dtype: Any) -> nn.Module:
        del act_layer  # a patch embedding: conv + norm, no activation
        return nn.Sequential(nn.Conv2d(in_chans, dim, kernel_size=4, stride=4, device=device,
                                       dtype=dtype),
                             nn.BatchNorm2d(dim, device=device, dtype=dtype))

    def make_downsample(self, in_dim: int, out_dim: int, stride: int, *, device: Any,
                        dtype: Any) -> nn.Module:
        return patch_merging(in_dim, out_dim, stride, device=device, dtype=dtype)


# The latest official code points at this OneDrive share; older revisions (and the README) at
# https://matix.li/4e9034a91a23, a host that no longer serves the file.
default_cfgs = generate_default_cfgs({
    "biformer_stl.in1k": default_cfg(url=onedrive_url("s!AkBbczdRlZvChSf-m7ujkvx9lIQ1")),
})


@register_model
@model_spec(params_m=28.4, gmacs=4.6, top1=82.7, drop_path_rate=0.1)
def biformer_stl(pretrained: bool = False, **kwargs: Any) -> BiFormerSTL:
    """BiFormer-STL (Swin-T layout): 28.4 M parameters, 4.6 GMACs at 224x224, 82.7% top-1."""
    model_args = dict(depths=(2, 2, 6, 2), dims=(96, 192, 384, 768))
    return build_biformer(BiFormerSTL, "biformer_stl", pretrained, **dict(model_args, **kwargs))
