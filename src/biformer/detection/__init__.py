"""Dense prediction with BiFormer backbones: torchvision detectors and smp segmentation.

* ``biformer_fpn_backbone(...)``: BiFormer + per-stage LayerNorm + torchvision FPN, accepted by
  ``FasterRCNN``, ``MaskRCNN``, ``RetinaNet`` and ``FCOS``;
* ``fasterrcnn_biformer``, ``maskrcnn_biformer``, ``retinanet_biformer``, ``fcos_biformer``:
  the detectors, built in one call with torchvision's builder arguments (``weights``,
  ``weights_backbone``, ``trainable_backbone_layers``, ...), also through
  ``torchvision.models.get_model``;
* ``add_stage_norms(smp_model)``: the same per-stage LayerNorm for
  segmentation_models_pytorch models with a ``tu-biformer_*`` encoder.
"""

from .backbone import DEFAULT_WEIGHTS, BiFormerFPN, biformer_fpn_backbone, create_body
from .detectors import fasterrcnn_biformer, fcos_biformer, maskrcnn_biformer, retinanet_biformer
from .freezing import NORM_LAYERS, convert_batchnorm, freeze_parts
from .segmentation import StageNormFeatures, add_stage_norms

__all__ = [
    "DEFAULT_WEIGHTS",
    "NORM_LAYERS",
    "BiFormerFPN",
    "StageNormFeatures",
    "add_stage_norms",
    "biformer_fpn_backbone",
    "convert_batchnorm",
    "create_body",
    "fasterrcnn_biformer",
    "fcos_biformer",
    "freeze_parts",
    "maskrcnn_biformer",
    "retinanet_biformer",
]
