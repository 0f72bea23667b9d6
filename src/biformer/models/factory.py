"""What every BiFormer entrypoint shares: its pretrained config and ``build_model_with_cfg``."""

from __future__ import annotations

from typing import Any

from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.models import build_model_with_cfg
from torch import nn

from .layout import checkpoint_filter_fn
from .pretrained import pretrained_kwargs

__all__ = ["build_biformer", "default_cfg", "onedrive_url"]

# 4 stages, not timm's default 5: features_only (and smp, which asks without out_indices)
FEATURE_CFG = dict(flatten_sequential=True, out_indices=(0, 1, 2, 3))


def onedrive_url(share: str) -> str:
    """The download address of an official OneDrive share (they all end in /root/content)."""
    return f"https://api.onedrive.com/v1.0/shares/{share}/root/content"


def default_cfg(url: str = "", **kwargs: Any) -> dict[str, Any]:
    """The pretrained config of an official ImageNet-1K checkpoint.

    Any input size runs (maps are padded to whole regions where needed): ``min_input_size``
    is where every stage still has a map, the 4x4 stem and three 2x2 merges of the STL models.
    """
    return {
        "url": url,
        "num_classes": 1000,
        "input_size": (3, 224, 224),
        "min_input_size": (3, 32, 32),
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


def build_biformer(model_cls: type[nn.Module], variant: str, pretrained: bool = False,
                   **kwargs: Any) -> nn.Module:
    """``build_model_with_cfg`` for every BiFormer family: official checkpoints converted by
    ``checkpoint_filter_fn``, official weights cached under one file name per model, four
    feature levels."""
    return build_model_with_cfg(
        model_cls,
        variant,
        pretrained,
        pretrained_filter_fn=checkpoint_filter_fn,
        feature_cfg=dict(FEATURE_CFG),
        **pretrained_kwargs(variant, pretrained, kwargs),
    )
