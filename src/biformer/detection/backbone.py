"""BiFormer + FPN backbone for torchvision's detectors (Faster/Mask R-CNN, RetinaNet, FCOS).

The body is the BiFormer classifier without its head and final norm; each returned stage gets
the extra LayerNorm the paper adds for dense prediction, then torchvision's
``FeaturePyramidNetwork`` turns the maps into ``out_channels``-wide pyramid levels.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import timm
from timm.layers import LayerNorm2d
from torch import Tensor, nn
from torchvision.ops.feature_pyramid_network import (
    ExtraFPNBlock,
    FeaturePyramidNetwork,
    LastLevelMaxPool,
)

from ..checkpoint import check_model_name, create_model, model_from_checkpoint
from ..errors import MissingFileError
from .freezing import NORM_LAYERS, body_parts, convert_batchnorm, freeze_parts

__all__ = ["DEFAULT_WEIGHTS", "BiFormerFPN", "biformer_fpn_backbone", "create_body"]


DEFAULT_WEIGHTS = ("DEFAULT", "IMAGENET1K_V1")  # timm's pretrained weights (the official ones)


def _weights_file(weights: str | os.PathLike) -> Path:
    """A checkpoint file, or the ``model.safetensors`` of a timm / HF folder."""
    path = Path(weights)
    if path.is_dir():
        inner = path / "model.safetensors"
        if not inner.is_file():
            raise MissingFileError(f"{path} is a folder without model.safetensors; pass a "
                                   "checkpoint file or a folder written by biformer convert")
        return inner
    return path


def create_body(
    name: str,
    *,
    weights: str | os.PathLike | None = None,
    n_win: int | Sequence[int] = 16,
    auto_pad: bool = True,
    **model_kwargs: Any,
) -> nn.Module:
    """A headless BiFormer (``num_classes=0``) with classifier weights when ``weights`` says so.

    ``weights``: None (random), ``"DEFAULT"`` (timm's pretrained weights, downloaded), a
    checkpoint of ours, an official or timm one, or a folder from ``biformer convert``. Every
    key but the classifier's must fit.
    """
    check_model_name(name)
    overrides = dict(num_classes=0, n_win=n_win, auto_pad=auto_pad, **model_kwargs)
    if weights is None:
        return create_model(name, **overrides)
    if isinstance(weights, str) and weights in DEFAULT_WEIGHTS:
        return timm.create_model(name, pretrained=True, **overrides)
    return model_from_checkpoint(_weights_file(weights), model=name, new_head=True,
                                 **overrides)[0]


class BiFormerFPN(nn.Module):
    """BiFormer stages -> per-stage LayerNorm -> torchvision FPN.

    Args:
        body: a BiFormer model (``forward_intermediates``, ``feature_info``); it is pruned to
            the stages needed (final norm and classifier dropped).
        returned_stages: stage indices fed to the FPN, e.g. ``(0, 1, 2, 3)`` (R-CNN) or
            ``(1, 2, 3)`` (RetinaNet, FCOS).
        out_channels: width of every pyramid level.
        extra_blocks: torchvision extra levels (``LastLevelMaxPool()``: ``"pool"``;
            ``LastLevelP6P7(out_channels, out_channels)``: ``"p6"``, ``"p7"``); None: none.
        stage_norms: the paper's extra LayerNorm on each returned stage.
        trainable_layers: parts trained, counted from the last (``stem`` + 4 stages = 5;
            None: all). Frozen parts have ``requires_grad=False`` and stay in eval mode (BatchNorm uses and
            keeps its running statistics) even after ``train()``.

    Shape: ``forward(x)``: ``[B, 3, H, W]`` (NCHW) -> ``OrderedDict`` of NCHW maps
    ``[B, out_channels, H / s, W / s]`` keyed ``"0"``, ``"1"``, ... then the extra levels.
    """

    def __init__(
        self,
        body: nn.Module,
        *,
        returned_stages: Sequence[int] = (0, 1, 2, 3),
        out_channels: int = 256,
        extra_blocks: ExtraFPNBlock | None = None,
        stage_norms: bool = True,
        trainable_layers: int | None = None,
    ):
        super().__init__()
        num_stages = len(body_parts(body)) - 1
        returned = tuple(int(i) for i in returned_stages)
        if not returned or list(returned) != sorted(set(returned)) or not all(
            0 <= i < num_stages for i in returned
        ):
            raise ValueError(
                f"returned_stages must be increasing stage indices in [0, {num_stages}), e.g. "
                f"(0, 1, 2, 3) or (1, 2, 3), got {tuple(returned_stages)!r}"
            )
        if out_channels < 1:
            raise ValueError(f"out_channels must be positive, got {out_channels}")
        channels = [int(body.feature_info[i]["num_chs"]) for i in returned]
        body.prune_intermediate_layers(list(returned), prune_norm=True, prune_head=True)
        if trainable_layers is None:
            trainable_layers = len(body_parts(body))
        freeze_parts(body, trainable_layers)
        self.body = body
        self.returned_stages = returned
        self.trainable_layers = trainable_layers
        self.norms = nn.ModuleList(
            [LayerNorm2d(c, eps=1e-6) if stage_norms else nn.Identity() for c in channels]
        )
        self.fpn = FeaturePyramidNetwork(channels, out_channels, extra_blocks=extra_blocks)
        self.in_channels_list = channels
        self.out_channels = out_channels

    def frozen_parts(self) -> list[nn.Module]:
        """The body parts that do not train (stem first)."""
        parts = body_parts(self.body)
        return parts[: len(parts) - self.trainable_layers]

    def train(self, mode: bool = True) -> BiFormerFPN:
        super().train(mode)
        for part in self.frozen_parts():
            part.eval()  # frozen BatchNorm keeps its running statistics
        return self

    def forward(self, x: Tensor) -> OrderedDict[str, Tensor]:
        feats = self.body.forward_intermediates(
            x, indices=list(self.returned_stages), intermediates_only=True, stop_early=True
        )  # NCHW maps, one per returned stage
        named = OrderedDict(
            (str(i), norm(f)) for i, (norm, f) in enumerate(zip(self.norms, feats, strict=True))
        )
        return self.fpn(named)


def biformer_fpn_backbone(
    name: str = "biformer_small",
    *,
    weights: str | os.PathLike | None = None,
    trainable_layers: int | None = None,
    norm_layer: str = "bn",
    returned_stages: Sequence[int] = (0, 1, 2, 3),
    extra_blocks: ExtraFPNBlock | None = None,
    out_channels: int = 256,
    stage_norms: bool = True,
    n_win: int | Sequence[int] = 16,
    auto_pad: bool = True,
    **model_kwargs: Any,
) -> BiFormerFPN:
    """A BiFormer + FPN backbone that torchvision's detectors accept (it has ``out_channels``);
    the counterpart of torchvision's ``resnet_fpn_backbone``.

    Args:
        name: BiFormer model name (``biformer_tiny/small/base/stl/stl_nchw``).
        weights: classifier weights for the body (see ``create_body``): None, ``"DEFAULT"``, a
            checkpoint file or a ``biformer convert`` folder.
        trainable_layers: parts trained counted from the last, 0..5 (``stem`` + 4 stages);
            default 5 (all) for random weights and 3 with weights, as torchvision does.
        norm_layer: the body's BatchNorm: ``"bn"``, ``"frozen_bn"`` (torchvision's
            ``FrozenBatchNorm2d``) or ``"sync_bn"`` (``SyncBatchNorm`` for DDP; build the model,
            then wrap it in ``DistributedDataParallel``).
        returned_stages: ``(0, 1, 2, 3)`` for R-CNN, ``(1, 2, 3)`` for RetinaNet/FCOS.
        extra_blocks: default ``LastLevelMaxPool()`` (R-CNN); ``LastLevelP6P7(256, 256)`` for
            RetinaNet/FCOS.
        out_channels: FPN width.
        stage_norms: the paper's extra LayerNorm per returned stage.
        n_win: regions per side (16 in the paper's detectors; any input size with
            ``auto_pad``; the automatic backend picks the memory-bounded path for large maps).
        model_kwargs: other model options (``drop_path_rate``, ``depths``, ...).

    Returns:
        ``BiFormerFPN`` (``[B, 3, H, W]`` -> ordered dict of ``[B, out_channels, h, w]``).
    """
    if norm_layer not in NORM_LAYERS:
        raise ValueError(f"norm_layer must be one of {NORM_LAYERS}, got {norm_layer!r}")
    if trainable_layers is None and weights is not None:
        trainable_layers = 3
    body = create_body(name, weights=weights, n_win=n_win, auto_pad=auto_pad, **model_kwargs)
    body = convert_batchnorm(body, norm_layer)
    return BiFormerFPN(
        body,
        returned_stages=returned_stages,
        out_channels=out_channels,
        extra_blocks=LastLevelMaxPool() if extra_blocks is None else extra_blocks,
        stage_norms=stage_norms,
        trainable_layers=trainable_layers,
    )
