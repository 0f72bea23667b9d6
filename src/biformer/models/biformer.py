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

from collections.abc import Sequence
from typing import Any

from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
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
from .pretrained import pretrained_kwargs

__all__ = ["BiFormer", "BiFormerBlock"]


class BiFormerBlock(nn.Module):
    """``x + pos_embed(x)``, then ``x + attn(norm1(x))``, then ``x + mlp(norm2(x))``.

    Input and output ``[B, H, W, dim]`` (NHWC). ``pos_embed`` is a 3x3 depthwise conv run on
    the NCHW view of the same memory. Parameter names follow the official ``Block``.
    """

    def __init__(
        self,
        dim: int,
        *,
        topk: int,
        n_win: int,
        mlp_ratio: float = 3.0,
        head_dim: int = 32,
        side_dwconv: int = 5,
        drop_path: float = 0.0,
        auto_pad: bool = False,
    ):
        super().__init__()
        hidden = int(mlp_ratio * dim)
        self.pos_embed = nn.Conv2d(dim, dim, kernel_size=3, padding=1, groups=dim)
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = nhwc_attention(dim, topk=topk, n_win=n_win, head_dim=head_dim,
                                   side_dwconv=side_dwconv, auto_pad=auto_pad)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        # Identity at index 1 keeps the official parameter names (mlp.0, mlp.3)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.Identity(), nn.GELU(),
                                 nn.Linear(hidden, dim))
        self.drop_path = make_drop_path(drop_path)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.pos_embed(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)  # B, H, W, C
        x = x + self.drop_path(self.attn(self.norm1(x)))
        x = x + self.drop_path(self.mlp(self.norm2(x)))
        return x


class BiFormer(BiFormerBase):
    """BiFormer backbone and classifier (T/S/B family).

    Args:
        depths: blocks per stage.
        dims: channels per stage.
        in_chans: input channels.
        num_classes: classifier outputs (0: no classifier, ``forward`` returns pooled features).
        global_pool: ``"avg"`` or ``""`` (keep the map).
        mlp_ratio: MLP hidden width / dim.
        head_dim: channels per head of the routed-attention stages.
        topks: routed regions per stage (-2: global attention with LePE, -1: without).
        n_win: regions per side, an int or one per stage (``n_win x n_win`` regions).
        auto_pad: pad maps that are not multiples of ``n_win`` (any input size).
        side_dwconv: LePE kernel size.
        output_stride: 32, or 16 / 8 for dense prediction (later downsamplings keep the size).
        drop_rate: dropout before the classifier.
        drop_path_rate: stochastic depth, rising linearly to this value over all blocks.

    Shape: ``forward``: ``[B, in_chans, H, W]`` -> ``[B, num_classes]``.
    """

    def __init__(
        self,
        depths: Sequence[int] = (2, 2, 8, 2),
        dims: Sequence[int] = (64, 128, 256, 512),
        *,
        in_chans: int = 3,
        num_classes: int = 1000,
        global_pool: str = "avg",
        mlp_ratio: float = 3.0,
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
            nn.Conv2d(in_chans, dims[0] // 2, kernel_size=3, stride=2, padding=1),
            nn.BatchNorm2d(dims[0] // 2),
            nn.GELU(),
            nn.Conv2d(dims[0] // 2, dims[0], kernel_size=3, stride=2, padding=1),
            nn.BatchNorm2d(dims[0]),
        )
        stages = []
        for i in range(4):
            if i == 0:
                downsample: nn.Module = nn.Identity()
            else:
                downsample = nn.Sequential(
                    nn.Conv2d(dims[i - 1], dims[i], kernel_size=3, stride=strides[i], padding=1),
                    nn.BatchNorm2d(dims[i]),
                )
            blocks = [
                BiFormerBlock(dims[i], topk=topks[i], n_win=n_wins[i], mlp_ratio=mlp_ratio,
                              head_dim=head_dim, side_dwconv=side_dwconv, drop_path=dpr[i][j],
                              auto_pad=auto_pad)
                for j in range(depths[i])
            ]
            stages.append(BiFormerStage(downsample, blocks, channels_last_blocks=True))
        self.stages = nn.Sequential(*stages)
        self._init_head(dims, num_classes=num_classes, global_pool=global_pool,
                        drop_rate=drop_rate, in_chans=in_chans, output_stride=output_stride)
        self.apply(self._init_weights)


def _create_biformer(variant: str, pretrained: bool = False, **kwargs: Any) -> BiFormer:
    return build_model_with_cfg(
        BiFormer,
        variant,
        pretrained,
        pretrained_filter_fn=checkpoint_filter_fn,
        feature_cfg=dict(flatten_sequential=True, out_indices=(0, 1, 2, 3)),
        **pretrained_kwargs(variant, pretrained, kwargs),
    )


def _cfg(url: str = "", **kwargs: Any) -> dict[str, Any]:
    return {
        "url": url,
        "num_classes": 1000,
        "input_size": (3, 224, 224),
        "pool_size": (7, 7),
        "crop_pct": 0.875,
        "interpolation": "bicubic",
        "mean": IMAGENET_DEFAULT_MEAN,
        "std": IMAGENET_DEFAULT_STD,
        "first_conv": "stem.0",
        "classifier": "head",
        "license": "mit",
        "paper_ids": "arXiv:2303.08810",
        "paper_name": "BiFormer: Vision Transformer with Bi-Level Routing Attention",
        "origin_url": "https://github.com/rayleizhu/BiFormer",
        **kwargs,
    }


_ONEDRIVE = "https://api.onedrive.com/v1.0/shares/{}/root/content"

default_cfgs = generate_default_cfgs({
    "biformer_tiny.in1k": _cfg(url=_ONEDRIVE.format("s!AkBbczdRlZvChHEOoGkgwgQzEDlM")),
    "biformer_small.in1k": _cfg(url=_ONEDRIVE.format("s!AkBbczdRlZvChHDyM-x9KWRBZ832")),
    "biformer_base.in1k": _cfg(url=_ONEDRIVE.format("s!AkBbczdRlZvChHI_XPhoadjaNxtO")),
})

_TINY = dict(depths=(2, 2, 8, 2), dims=(64, 128, 256, 512))
_SMALL = dict(depths=(4, 4, 18, 4), dims=(64, 128, 256, 512))
_BASE = dict(depths=(4, 4, 18, 4), dims=(96, 192, 384, 768))
for _name, _args in (("biformer_tiny", _TINY), ("biformer_small", _SMALL),
                     ("biformer_base", _BASE)):
    register_layout(_name, "biformer", _args["depths"], _args["dims"])


@register_model
def biformer_tiny(pretrained: bool = False, **kwargs: Any) -> BiFormer:
    """BiFormer-T: 13.1 M parameters, 2.2 GMACs at 224x224, 81.4% ImageNet top-1."""
    return _create_biformer("biformer_tiny", pretrained, **dict(_TINY, **kwargs))


@register_model
def biformer_small(pretrained: bool = False, **kwargs: Any) -> BiFormer:
    """BiFormer-S: 25.5 M parameters, 4.5 GMACs at 224x224, 83.8% ImageNet top-1."""
    return _create_biformer("biformer_small", pretrained, **dict(_SMALL, **kwargs))


@register_model
def biformer_base(pretrained: bool = False, **kwargs: Any) -> BiFormer:
    """BiFormer-B: 56.8 M parameters, 9.8 GMACs at 224x224, 84.3% ImageNet top-1."""
    return _create_biformer("biformer_base", pretrained, **dict(_BASE, **kwargs))
