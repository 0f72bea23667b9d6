"""BiFormer-T/S/B: vision transformers with Bi-Level Routing Attention.

Paper: "BiFormer: Vision Transformer with Bi-Level Routing Attention", Lei Zhu, Xinjiang Wang,
Zhanghan Ke, Wayne Zhang, Rynson Lau, CVPR 2023 (https://arxiv.org/abs/2303.08810).
Original code: https://github.com/rayleizhu/BiFormer (MIT).

Layout (checkpoint-compatible with the official models after ``checkpoint_filter_fn``):
two-conv stem (stride 4), four stages of ``[3x3 depthwise positional conv, LayerNorm -> BRA,
LayerNorm -> MLP]`` blocks (global attention with LePE in the last stage), BatchNorm, average
pool, linear classifier. Blocks run on NHWC tensors; each stage permutes NCHW -> NHWC once on
entry and back once on exit (the official blocks permute in every block: same numbers).

    @inproceedings{zhu2023biformer,
      title={BiFormer: Vision Transformer with Bi-Level Routing Attention},
      author={Zhu, Lei and Wang, Xinjiang and Ke, Zhanghan and Zhang, Wayne and Lau, Rynson},
      booktitle={CVPR}, year={2023}}
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from timm.models import generate_default_cfgs, register_model
from torch import Tensor, nn

from .base import BiFormerBase
from .blocks import ResidualBlock, resolve_act
from .factory import build_biformer, default_cfg, onedrive_url
from .specs import model_spec

__all__ = ["BiFormer", "BiFormerBlock"]


class BiFormerBlock(ResidualBlock):
    """``x + pos_embed(x)``, then ``x + attn(norm1(x))``, then ``x + mlp(norm2(x))``.

    Input and output ``[B, H, W, dim]`` (NHWC). ``pos_embed`` is a 3x3 depthwise conv run on
    the NCHW view of the same memory. Parameter names follow the official ``Block``; arguments
    as ``ResidualBlock`` (MLP ratio 3 by default).
    """

    def __init__(self, dim: int, *, mlp_ratio: float = 3.0, device: Any = None,
                 dtype: torch.dtype | None = None, **kwargs: Any):
        super().__init__(dim, mlp_ratio=mlp_ratio, device=device, dtype=dtype, **kwargs)
        self.pos_embed = nn.Conv2d(dim, dim, kernel_size=3, padding=1, groups=dim,
                                   device=device, dtype=dtype)

    @staticmethod
    def make_mlp(dim: int, hidden: int, act_layer: Callable[..., nn.Module],
                 **dd: Any) -> nn.Module:
        # Identity at index 1 keeps the official parameter names (mlp.0, mlp.3)
        return nn.Sequential(nn.Linear(dim, hidden, **dd), nn.Identity(), act_layer(),
                             nn.Linear(hidden, dim, **dd))

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.pos_embed(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)  # B, H, W, C
        return super().forward(x)


class BiFormer(BiFormerBase):
    """BiFormer backbone and classifier (T/S/B family); arguments of ``BiFormerBase``.

    Stem: two 3x3 stride-2 convs (BatchNorm, ``act_layer`` between, BatchNorm after); each later
    stage starts with a 3x3 stride-2 conv + BatchNorm. Defaults: BiFormer-T, MLP ratio 3.
    Shape: ``forward``: ``[B, in_chans, H, W]`` -> ``[B, num_classes]``.
    """

    block_cls = BiFormerBlock

    def __init__(self, depths: int | Sequence[int] = (2, 2, 8, 2),
                 dims: int | Sequence[int] = (64, 128, 256, 512), *, mlp_ratio: float = 3.0,
                 **kwargs: Any):
        super().__init__(depths, dims, mlp_ratio=mlp_ratio, **kwargs)

    def make_stem(self, in_chans: int, dim: int, *, act_layer: Any, device: Any,
                  dtype: Any) -> nn.Module:
        dd = dict(device=device, dtype=dtype)
        act_layer = resolve_act(act_layer)
        return nn.Sequential(
            nn.Conv2d(in_chans, dim // 2, kernel_size=3, stride=2, padding=1, **dd),
            nn.BatchNorm2d(dim // 2, **dd),
            act_layer(),
            nn.Conv2d(dim // 2, dim, kernel_size=3, stride=2, padding=1, **dd),
            nn.BatchNorm2d(dim, **dd),
        )

    def make_downsample(self, in_dim: int, out_dim: int, stride: int, *, device: Any,
                        dtype: Any) -> nn.Module:
        dd = dict(device=device, dtype=dtype)
        return nn.Sequential(
            nn.Conv2d(in_dim, out_dim, kernel_size=3, stride=stride, padding=1, **dd),
            nn.BatchNorm2d(out_dim, **dd),
        )


default_cfgs = generate_default_cfgs({
    "biformer_tiny.in1k": default_cfg(url=onedrive_url("s!AkBbczdRlZvChHEOoGkgwgQzEDlM")),
    "biformer_small.in1k": default_cfg(url=onedrive_url("s!AkBbczdRlZvChHDyM-x9KWRBZ832")),
    "biformer_base.in1k": default_cfg(url=onedrive_url("s!AkBbczdRlZvChHI_XPhoadjaNxtO")),
})


@register_model
@model_spec(params_m=13.1, gmacs=2.2, top1=81.4, drop_path_rate=0.1)
def biformer_tiny(pretrained: bool = False, **kwargs: Any) -> BiFormer:
    """BiFormer-T: 13.1 M parameters, 2.2 GMACs at 224x224, 81.4% ImageNet top-1."""
    model_args = dict(depths=(2, 2, 8, 2), dims=(64, 128, 256, 512))
    return build_biformer(BiFormer, "biformer_tiny", pretrained, **dict(model_args, **kwargs))


@register_model
@model_spec(params_m=25.5, gmacs=4.5, top1=83.8, drop_path_rate=0.15)
def biformer_small(pretrained: bool = False, **kwargs: Any) -> BiFormer:
    """BiFormer-S: 25.5 M parameters, 4.5 GMACs at 224x224, 83.8% ImageNet top-1."""
    model_args = dict(depths=(4, 4, 18, 4), dims=(64, 128, 256, 512))
    return build_biformer(BiFormer, "biformer_small", pretrained, **dict(model_args, **kwargs))


@register_model
@model_spec(params_m=56.8, gmacs=9.8, top1=84.3, drop_path_rate=0.4)
def biformer_base(pretrained: bool = False, **kwargs: Any) -> BiFormer:
    """BiFormer-B: 56.8 M parameters, 9.8 GMACs at 224x224, 84.3% ImageNet top-1."""
    model_args = dict(depths=(4, 4, 18, 4), dims=(96, 192, 384, 768))
    return build_biformer(BiFormer, "biformer_base", pretrained, **dict(model_args, **kwargs))
