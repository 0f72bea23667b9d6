"""torchvision detectors with a BiFormer + FPN backbone, ready to train.

Each builder makes the backbone with ``biformer_fpn_backbone`` (the options the paper uses:
``n_win=16``, per-stage LayerNorm, any input size) and passes the remaining keyword arguments to
the torchvision class (``min_size``, ``max_size``, ``box_score_thresh``, ...). Images go in as a
list of ``[3, H, W]`` float tensors in [0, 1]; the detectors normalise them with the ImageNet
mean and standard deviation, as the BiFormer classifiers were trained.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

from torchvision.models.detection import FCOS, FasterRCNN, MaskRCNN, RetinaNet
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool, LastLevelP6P7

from .backbone import BiFormerFPN, biformer_fpn_backbone

__all__ = ["fasterrcnn_biformer", "fcos_biformer", "maskrcnn_biformer", "retinanet_biformer"]

RCNN_STAGES = (0, 1, 2, 3)  # P2-P5 + max-pooled P6: 5 levels
SINGLE_STAGE_STAGES = (1, 2, 3)  # P3-P5 + P6, P7: 5 levels


def _backbone(
    name: str,
    *,
    single_stage: bool,
    pretrained_backbone: bool,
    checkpoint_path: str | os.PathLike | None,
    trainable_stages: int | None,
    norm_layer: str,
    n_win: int | Sequence[int],
    backbone_kwargs: Mapping[str, Any] | None,
) -> BiFormerFPN:
    extra = dict(backbone_kwargs or {})
    out_channels = int(extra.pop("out_channels", 256))
    return biformer_fpn_backbone(
        name,
        pretrained=pretrained_backbone,
        checkpoint_path=checkpoint_path,
        trainable_stages=trainable_stages,
        norm_layer=norm_layer,
        returned_stages=SINGLE_STAGE_STAGES if single_stage else RCNN_STAGES,
        extra_blocks=(LastLevelP6P7(out_channels, out_channels) if single_stage
                      else LastLevelMaxPool()),
        out_channels=out_channels,
        n_win=n_win,
        **extra,
    )


def fasterrcnn_biformer(
    name: str = "biformer_small",
    *,
    num_classes: int = 91,
    pretrained_backbone: bool = False,
    checkpoint_path: str | os.PathLike | None = None,
    trainable_stages: int | None = None,
    norm_layer: str = "bn",
    n_win: int | Sequence[int] = 16,
    backbone_kwargs: Mapping[str, Any] | None = None,
    **kwargs: Any,
) -> FasterRCNN:
    """Faster R-CNN on BiFormer stages 0-3 + FPN (levels ``"0"``-``"3"``, ``"pool"``).

    ``backbone_kwargs`` go to ``biformer_fpn_backbone`` (e.g. ``drop_path_rate``,
    ``out_channels``); ``kwargs`` to ``torchvision.models.detection.FasterRCNN``.
    """
    backbone = _backbone(
        name, single_stage=False, pretrained_backbone=pretrained_backbone,
        checkpoint_path=checkpoint_path, trainable_stages=trainable_stages, norm_layer=norm_layer,
        n_win=n_win, backbone_kwargs=backbone_kwargs,
    )
    return FasterRCNN(backbone, num_classes=num_classes, **kwargs)


def maskrcnn_biformer(
    name: str = "biformer_small",
    *,
    num_classes: int = 91,
    pretrained_backbone: bool = False,
    checkpoint_path: str | os.PathLike | None = None,
    trainable_stages: int | None = None,
    norm_layer: str = "bn",
    n_win: int | Sequence[int] = 16,
    backbone_kwargs: Mapping[str, Any] | None = None,
    **kwargs: Any,
) -> MaskRCNN:
    """Mask R-CNN on BiFormer stages 0-3 + FPN (the paper's instance segmentation setup)."""
    backbone = _backbone(
        name, single_stage=False, pretrained_backbone=pretrained_backbone,
        checkpoint_path=checkpoint_path, trainable_stages=trainable_stages, norm_layer=norm_layer,
        n_win=n_win, backbone_kwargs=backbone_kwargs,
    )
    return MaskRCNN(backbone, num_classes=num_classes, **kwargs)


def retinanet_biformer(
    name: str = "biformer_small",
    *,
    num_classes: int = 91,
    pretrained_backbone: bool = False,
    checkpoint_path: str | os.PathLike | None = None,
    trainable_stages: int | None = None,
    norm_layer: str = "bn",
    n_win: int | Sequence[int] = 16,
    backbone_kwargs: Mapping[str, Any] | None = None,
    **kwargs: Any,
) -> RetinaNet:
    """RetinaNet on BiFormer stages 1-3 + FPN with P6/P7 computed from P5 (5 levels)."""
    backbone = _backbone(
        name, single_stage=True, pretrained_backbone=pretrained_backbone,
        checkpoint_path=checkpoint_path, trainable_stages=trainable_stages, norm_layer=norm_layer,
        n_win=n_win, backbone_kwargs=backbone_kwargs,
    )
    return RetinaNet(backbone, num_classes=num_classes, **kwargs)


def fcos_biformer(
    name: str = "biformer_small",
    *,
    num_classes: int = 91,
    pretrained_backbone: bool = False,
    checkpoint_path: str | os.PathLike | None = None,
    trainable_stages: int | None = None,
    norm_layer: str = "bn",
    n_win: int | Sequence[int] = 16,
    backbone_kwargs: Mapping[str, Any] | None = None,
    **kwargs: Any,
) -> FCOS:
    """FCOS on BiFormer stages 1-3 + FPN with P6/P7 computed from P5 (5 levels)."""
    backbone = _backbone(
        name, single_stage=True, pretrained_backbone=pretrained_backbone,
        checkpoint_path=checkpoint_path, trainable_stages=trainable_stages, norm_layer=norm_layer,
        n_win=n_win, backbone_kwargs=backbone_kwargs,
    )
    return FCOS(backbone, num_classes=num_classes, **kwargs)
