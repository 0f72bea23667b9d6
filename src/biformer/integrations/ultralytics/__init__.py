"""Bi-Level Routing Attention in ultralytics YOLO models (extra ``yolo``: ultralytics >= 8.3).

    from ultralytics import YOLO
    from biformer.integrations.ultralytics import model_yaml, register

    register()                                   # our YAML names: BRA, C2f_BRA, C3k2_BRA
    model = YOLO(model_yaml("yolo11n-bra"))      # a shipped YAML at scale n
    model.train(data="data.yaml", epochs=10, imgsz=640)

Importing this package does not import ultralytics; ``register()`` does (and says how to install
it when missing). See docs/yolo.md for what ``register()`` changes, the YAML syntax and the demo.
"""

from .configs import CONFIG_DIR, MODEL_YAMLS, baseline_dict, baseline_name, model_yaml
from .modules import BRA, BRAOptions, attach_bra, bra_layers
from .registration import is_registered, register, unregister

__all__ = [
    "BRA",
    "CONFIG_DIR",
    "MODEL_YAMLS",
    "BRAOptions",
    "attach_bra",
    "baseline_dict",
    "baseline_name",
    "bra_layers",
    "is_registered",
    "model_yaml",
    "register",
    "unregister",
]
