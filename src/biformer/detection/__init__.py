"""Dense prediction with BiFormer backbones: torchvision detectors and smp segmentation.

* ``biformer_fpn_backbone(...)``: BiFormer + per-stage LayerNorm + torchvision FPN, accepted by
  ``FasterRCNN``, ``MaskRCNN``, ``RetinaNet`` and ``FCOS``;
* ``fasterrcnn_biformer``, ``maskrcnn_biformer``, ``retinanet_biformer``, ``fcos_biformer``:
  the detectors, built in one call;
* ``add_stage_norms(smp_model)``: the same per-stage LayerNorm for
  segmentation_models_pytorch models with a ``tu-biformer_*`` encoder.
"""

from .backbone import BiFormerFPN, biformer_fpn_backbone, create_body, load_backbone_checkpoint
from .detectors import fasterrcnn_biformer, fcos_biformer, maskrcnn_biformer, retinanet_biformer
from .freezing import NORM_LAYERS, convert_batchnorm, freeze_parts
from .segmentation import StageNormFeatures, add_stage_norms

__all__ = [
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
    "load_backbone_checkpoint",
    "maskrcnn_biformer",
    "retinanet_biformer",
]
