"""Training recipes: the reference ImageNet recipe and the small embedded-digits demo.

``biformer train --data DIR`` starts from :data:`REFERENCE` (BiFormer's ImageNet-1K recipe, which
is DeiT's); ``biformer train`` without data starts from :data:`DEMO`. Every command-line flag
overrides one field, so ``biformer train --epochs 5`` is the demo with five epochs.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "DEMO",
    "DEMO_MODEL_KWARGS",
    "DEMO_THREADS",
    "DROP_PATH",
    "REFERENCE",
    "Recipe",
    "drop_path_for",
]


@dataclass(frozen=True)
class Recipe:
    """Every hyper-parameter of a training run (one field per ``biformer train`` flag).

    ``lr=None`` means the linear scaling rule: ``lr_base * global_batch / lr_base_size``.
    ``drop_path=None`` means the per-model rate of :data:`DROP_PATH`.
    ``img_size=None`` means the model's own input size (its ``pretrained_cfg``).
    """

    model: str = "biformer_small"
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    img_size: int | None = None
    epochs: int = 300
    batch_size: int = 128  # per process
    lr: float | None = None
    lr_base: float = 5e-4
    lr_base_size: int = 512
    opt: str = "adamw"
    opt_eps: float = 1e-8
    momentum: float = 0.9
    weight_decay: float = 0.05
    sched: str = "cosine"
    warmup_epochs: float = 5
    warmup_lr: float = 1e-6
    min_lr: float = 1e-5
    smoothing: float = 0.1
    mixup: float = 0.8
    cutmix: float = 1.0
    mixup_prob: float = 1.0
    mixup_switch_prob: float = 0.5
    mixup_mode: str = "batch"
    aa: str | None = "rand-m9-mstd0.5-inc1"
    color_jitter: float = 0.4
    reprob: float = 0.25
    remode: str = "pixel"
    recount: int = 1
    hflip: float = 0.5
    scale: tuple[float, float] = (0.08, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    train_interpolation: str = "bicubic"
    crop_pct: float | None = None  # evaluation crop; None: the model's (0.875 for BiFormer)
    repeated_aug: bool = True  # only in distributed runs, as in DeiT
    drop_path: float | None = None
    clip_grad: float | None = None
    clip_mode: str = "norm"
    model_ema: bool = False
    model_ema_decay: float = 0.99996
    num_workers: int = 8
    seed: int = 0

    def replace(self, **changes: Any) -> Recipe:
        return dataclasses.replace(self, **changes)

    def as_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["scale"], out["ratio"] = list(self.scale), list(self.ratio)
        return out


# Stochastic depth per model. BiFormer-S: 0.15, the official training command; T and the STL
# models: 0.1, the official default; B: 0.4, not stated by the official repository (the rate of
# comparable ~57 M-parameter models); override with --drop-path.
DROP_PATH: dict[str, float] = {
    "biformer_tiny": 0.1,
    "biformer_small": 0.15,
    "biformer_base": 0.4,
    "biformer_stl": 0.1,
    "biformer_stl_nchw": 0.1,
}


def drop_path_for(recipe: Recipe) -> float:
    """The recipe's drop-path rate, or the model's official one, or 0.1 for other models."""
    if recipe.drop_path is not None:
        return recipe.drop_path
    return DROP_PATH.get(recipe.model, 0.1)


REFERENCE = Recipe()
"""BiFormer's ImageNet-1K recipe (DeiT's): AdamW 5e-4 per 512 images, 300 epochs, ..."""

# The demo model: BiFormer-T's blocks (real BRA, stage-4 global attention with LePE) shrunk for
# 32x32 digits on a CPU. Stage maps are 8x8, 4x4, 2x2, 1x1 tokens; n_win 4/2/2 splits the first
# three into 16 regions of 2x2 tokens (4 routed), 4 of 2x2 (2 routed) and 4 of 1x1 (2 routed).
DEMO_MODEL_KWARGS: dict[str, Any] = {
    "depths": (1, 1, 2, 1),
    "dims": (32, 64, 128, 128),
    "head_dim": 16,
    "mlp_ratio": 2.0,
    "n_win": (4, 2, 2, 1),
    "topks": (4, 2, 2, -2),
}

# CPU threads of the demo: its small tensors train several times faster on one thread than with
# OpenMP across the cores, above all on a busy machine.
DEMO_THREADS = 1

DEMO = Recipe(
    model="biformer_tiny",
    model_kwargs=DEMO_MODEL_KWARGS,
    img_size=32,
    epochs=15,
    batch_size=64,
    lr=2e-3,
    warmup_epochs=1,
    min_lr=1e-5,
    smoothing=0.1,
    mixup=0.0,
    cutmix=0.0,
    aa=None,
    color_jitter=0.0,
    reprob=0.0,
    hflip=0.0,  # digits are not mirror-symmetric
    scale=(0.6, 1.0),
    ratio=(0.8, 1.25),
    crop_pct=1.0,  # evaluate on the whole (upsampled) digit
    drop_path=0.05,
    num_workers=0,
)
"""The embedded-digits demo: a small BiFormer, light augmentation (random resized crops only)."""
