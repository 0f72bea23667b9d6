"""BiFormer + FPN backbone for torchvision's detectors (Faster/Mask R-CNN, RetinaNet, FCOS).

The body is the BiFormer classifier without its head and final norm; each returned stage gets
the extra LayerNorm the paper adds for dense prediction, then torchvision's
``FeaturePyramidNetwork`` turns the maps into ``out_channels``-wide pyramid levels.
"""

from __future__ import annotations

import os
import warnings
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

import timm
from timm.layers import LayerNorm2d
from torch import Tensor, nn
from torchvision.ops.feature_pyramid_network import (
    ExtraFPNBlock,
    FeaturePyramidNetwork,
    LastLevelMaxPool,
)

from ..viz.inputs import check_model_name
from .freezing import NORM_LAYERS, body_parts, convert_batchnorm, freeze_parts

__all__ = ["BiFormerFPN", "biformer_fpn_backbone", "create_body", "load_backbone_checkpoint"]


def load_backbone_checkpoint(body: nn.Module, path: str | os.PathLike) -> None:
    """Load a classifier checkpoint (ours or official) into a headless body, strictly.

    Only the classifier (``head.*``) may be left over; any other missing, unexpected or
    mis-shaped key raises ``biformer.CheckpointError``.
    """
    from ..checkpoint import CheckpointError, load_checkpoint

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = load_checkpoint(body, path, strict=False)
    extra = [k for k in result.unexpected_keys if not k.startswith("head.")]
    if result.missing_keys or result.mismatched_keys or extra:
        raise CheckpointError(
            f"{path} does not fit the {type(body).__name__} backbone: missing "
            f"{result.missing_keys[:5]}, shape-mismatched {result.mismatched_keys[:5]}, "
            f"unexpected {extra[:5]}; create the backbone from the model the checkpoint was "
            "trained as"
        )


def create_body(
    name: str,
    *,
    pretrained: bool = False,
    checkpoint_path: str | os.PathLike | None = None,
    n_win: int | Sequence[int] = 16,
    auto_pad: bool = True,
    **model_kwargs: Any,
) -> nn.Module:
    """A headless BiFormer (``num_classes=0``) with official/own weights if asked."""
    check_model_name(name)
    body = timm.create_model(
        name, pretrained=pretrained, num_classes=0, n_win=n_win, auto_pad=auto_pad,
        **model_kwargs,
    )
    if checkpoint_path is not None:
        load_backbone_checkpoint(body, checkpoint_path)
    return body


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
        trainable_stages: parts trained, counted from the last (``stem`` + 4 stages = 5;
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
        trainable_stages: int | None = None,
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
        if trainable_stages is None:
            trainable_stages = len(body_parts(body))
        freeze_parts(body, trainable_stages)
        self.body = body
        self.returned_stages = returned
        self.trainable_stages = trainable_stages
        self.norms = nn.ModuleList(
            [LayerNorm2d(c, eps=1e-6) if stage_norms else nn.Identity() for c in channels]
        )
        self.fpn = FeaturePyramidNetwork(channels, out_channels, extra_blocks=extra_blocks)
        self.in_channels_list = channels
        self.out_channels = out_channels

    def frozen_parts(self) -> list[nn.Module]:
        """The body parts that do not train (stem first)."""
        parts = body_parts(self.body)
        return parts[: len(parts) - self.trainable_stages]

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
    pretrained: bool = False,
    checkpoint_path: str | os.PathLike | None = None,
    trainable_stages: int | None = None,
    norm_layer: str = "bn",
    returned_stages: Sequence[int] = (0, 1, 2, 3),
    extra_blocks: ExtraFPNBlock | None = None,
    out_channels: int = 256,
    stage_norms: bool = True,
    n_win: int | Sequence[int] = 16,
    auto_pad: bool = True,
    **model_kwargs: Any,
) -> BiFormerFPN:
    """A BiFormer + FPN backbone that torchvision's detectors accept (it has ``out_channels``).

    Args:
        name: BiFormer model name (``biformer_tiny/small/base/stl/stl_nchw``).
        pretrained: load the model's ImageNet weights through timm (needs the file or network).
        checkpoint_path: load a classifier checkpoint of ours or an official one instead.
        trainable_stages: parts trained counted from the last, 0..5 (``stem`` + 4 stages);
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
    if trainable_stages is None and (pretrained or checkpoint_path is not None):
        trainable_stages = 3
    body = create_body(
        name, pretrained=pretrained, checkpoint_path=checkpoint_path, n_win=n_win,
        auto_pad=auto_pad, **model_kwargs,
    )
    body = convert_batchnorm(body, norm_layer)
    return BiFormerFPN(
        body,
        returned_stages=returned_stages,
        out_channels=out_channels,
        extra_blocks=LastLevelMaxPool() if extra_blocks is None else extra_blocks,
        stage_norms=stage_norms,
        trainable_stages=trainable_stages,
    )
