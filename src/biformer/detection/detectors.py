"""torchvision detectors with a BiFormer + FPN backbone, built the torchvision way.

``fasterrcnn_biformer``, ``maskrcnn_biformer``, ``retinanet_biformer`` and ``fcos_biformer`` take
torchvision's keyword-only builder arguments — ``weights`` (a whole-detector checkpoint),
``progress``, ``num_classes``, ``weights_backbone`` (classifier weights for the backbone: a
checkpoint file, a ``biformer convert`` folder, or ``"DEFAULT"`` for timm's pretrained ones),
``trainable_backbone_layers`` — plus the BiFormer options the paper uses (``n_win=16``,
per-stage LayerNorm, any input size); the remaining keyword arguments go to the torchvision
class (``min_size``, ``max_size``, ``box_score_thresh``, ...). Images go in as a list of
``[3, H, W]`` float tensors in [0, 1]; the detectors normalise them with the ImageNet mean and
standard deviation, as the BiFormer classifiers were trained.

torchvision has no public way to register third-party builders; when its private
``torchvision.models._api.register_model`` exists, the four are registered with it, so
``torchvision.models.get_model("fasterrcnn_biformer", ...)`` finds them.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from torch import nn
from torchvision.models.detection import FCOS, FasterRCNN, MaskRCNN, RetinaNet
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool, LastLevelP6P7

from ..checkpoint import load_checkpoint
from .backbone import biformer_fpn_backbone

__all__ = ["fasterrcnn_biformer", "fcos_biformer", "maskrcnn_biformer", "retinanet_biformer"]

RCNN_STAGES = (0, 1, 2, 3)  # P2-P5 + max-pooled P6: 5 levels
SINGLE_STAGE_STAGES = (1, 2, 3)  # P3-P5 + P6, P7: 5 levels
DEFAULT_NUM_CLASSES = 91  # COCO, as torchvision


def _build(detector: type[nn.Module], single_stage: bool, name: str, *,
           weights: str | os.PathLike | None, num_classes: int | None,
           weights_backbone: str | os.PathLike | None, trainable_backbone_layers: int | None,
           norm_layer: str, n_win: int | Sequence[int],
           backbone_kwargs: Mapping[str, Any] | None, **kwargs: Any) -> nn.Module:
    extra = dict(backbone_kwargs or {})
    out_channels = int(extra.pop("out_channels", 256))
    backbone = biformer_fpn_backbone(
        name,
        weights=None if weights is not None else weights_backbone,
        trainable_layers=trainable_backbone_layers,
        norm_layer=norm_layer,
        returned_stages=SINGLE_STAGE_STAGES if single_stage else RCNN_STAGES,
        extra_blocks=(LastLevelP6P7(out_channels, out_channels) if single_stage
                      else LastLevelMaxPool()),
        out_channels=out_channels,
        n_win=n_win,
        **extra,
    )
    model = detector(backbone, num_classes=num_classes or DEFAULT_NUM_CLASSES, **kwargs)
    if weights is not None:
        load_checkpoint(model, weights)
    return model


def _builder(detector: type[nn.Module], single_stage: bool, public: str, what: str) -> Callable:
    def build(
        name: str = "biformer_small",
        *,
        weights: str | os.PathLike | None = None,
        progress: bool = True,
        num_classes: int | None = None,
        weights_backbone: str | os.PathLike | None = None,
        trainable_backbone_layers: int | None = None,
        norm_layer: str = "bn",
        n_win: int | Sequence[int] = 16,
        backbone_kwargs: Mapping[str, Any] | None = None,
        **kwargs: Any,
    ) -> nn.Module:
        del progress  # downloads (weights_backbone="DEFAULT") go through timm's own progress
        return _build(detector, single_stage, name, weights=weights, num_classes=num_classes,
                      weights_backbone=weights_backbone,
                      trainable_backbone_layers=trainable_backbone_layers,
                      norm_layer=norm_layer, n_win=n_win, backbone_kwargs=backbone_kwargs,
                      **kwargs)

    build.__name__ = build.__qualname__ = public
    build.__doc__ = (
        f"{what}\n\n"
        "    Args (torchvision's builder conventions, keyword-only):\n"
        "        name: BiFormer model name of the backbone.\n"
        "        weights: a checkpoint of the whole detector (loaded strictly), or None.\n"
        "        progress: accepted for torchvision compatibility.\n"
        "        num_classes: detector classes, background included (default 91, COCO).\n"
        "        weights_backbone: classifier weights for the backbone (a checkpoint, a\n"
        "            ``biformer convert`` folder, ``\"DEFAULT\"``); ignored with ``weights``.\n"
        "        trainable_backbone_layers: 0..5 parts trained from the last (default 3 with\n"
        "            backbone weights, else 5).\n"
        "        norm_layer: ``\"bn\"``, ``\"frozen_bn\"`` or ``\"sync_bn\"`` for the body.\n"
        "        n_win: regions per side of the backbone's BRA stages (16 in the paper).\n"
        "        backbone_kwargs: more ``biformer_fpn_backbone`` options (``out_channels``,\n"
        "            ``drop_path_rate``, ``depths``, ...).\n"
        f"        kwargs: options of ``torchvision.models.detection.{detector.__name__}``.\n\n"
        f"    Returns:\n        ``{detector.__name__}`` (lists of ``[3, H, W]`` images in [0, 1]).\n"
    )
    return build


fasterrcnn_biformer = _builder(
    FasterRCNN, False, "fasterrcnn_biformer",
    "Faster R-CNN on BiFormer stages 0-3 + FPN (levels ``\"0\"``-``\"3\"``, ``\"pool\"``).")
maskrcnn_biformer = _builder(
    MaskRCNN, False, "maskrcnn_biformer",
    "Mask R-CNN on BiFormer stages 0-3 + FPN (the paper's instance segmentation setup).")
retinanet_biformer = _builder(
    RetinaNet, True, "retinanet_biformer",
    "RetinaNet on BiFormer stages 1-3 + FPN with P6/P7 computed from P5 (5 levels).")
fcos_biformer = _builder(
    FCOS, True, "fcos_biformer",
    "FCOS on BiFormer stages 1-3 + FPN with P6/P7 computed from P5 (5 levels).")


def _register_with_torchvision() -> bool:
    """Register the builders with torchvision's (private) model registry, when it has one."""
    try:
        from torchvision.models import _api
    except ImportError:
        return False
    registry = getattr(_api, "BUILTIN_MODELS", None)
    register = getattr(_api, "register_model", None)
    if registry is None or register is None:
        return False
    for fn in (fasterrcnn_biformer, maskrcnn_biformer, retinanet_biformer, fcos_biformer):
        if fn.__name__ not in registry:
            register(fn.__name__)(fn)
    return True


REGISTERED_WITH_TORCHVISION = _register_with_torchvision()
