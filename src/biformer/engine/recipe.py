"""Training recipes: the reference ImageNet recipe and the small embedded-digits demo.

``biformer train --data DIR`` starts from :data:`REFERENCE` (BiFormer's ImageNet-1K recipe, which
is DeiT's); ``biformer train`` without data starts from :data:`DEMO`. Every command-line flag
overrides one field, so ``biformer train --epochs 5`` is the demo with five epochs.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

from ..errors import CommandError

__all__ = [
    "DEMO",
    "DEMO_MODEL_KWARGS",
    "DEMO_THREADS",
    "REFERENCE",
    "Recipe",
    "check_recipe",
    "drop_path_for",
]


@dataclass(frozen=True)
class Recipe:
    """Every hyper-parameter of a training run (one field per ``biformer train`` flag).

    ``lr=None`` means the linear scaling rule: ``lr_base * global_batch / lr_base_size``.
    ``drop_path=None`` means the model's recommended rate (``biformer.models.MODEL_SPECS``).
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


def drop_path_for(recipe: Recipe) -> float:
    """The recipe's drop-path rate, or the model's recommended one, or 0.1 for other models."""
    from ..models import MODEL_SPECS

    if recipe.drop_path is not None:
        return recipe.drop_path
    spec = MODEL_SPECS.get(recipe.model)
    return spec.drop_path_rate if spec is not None else 0.1


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
    "topks": (4, 2, 2, "global_lepe"),
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


def _flag(name: str) -> str:
    return "--" + {"num_workers": "workers", "drop_path": "drop-path"}.get(name, name).replace(
        "_", "-")


def _finite(r: Recipe, name: str, low: float, high: float, *, closed_low: bool = True,
            closed_high: bool = True) -> None:
    value = getattr(r, name)
    if value is None:
        return
    above = value >= low if closed_low else value > low
    below = value <= high if closed_high else value < high
    if not (isinstance(value, (int, float)) and math.isfinite(value) and above and below):
        lo, hi = "[" if closed_low else "(", "]" if closed_high else ")"
        raise CommandError(f"{_flag(name)} must be a number in {lo}{low:g}, {high:g}{hi}, "
                           f"got {value}")


def _pair(r: Recipe, name: str, upper: float | None) -> None:
    lo, hi = getattr(r, name)
    ok = all(math.isfinite(v) for v in (lo, hi)) and 0 < lo <= hi and (upper is None
                                                                       or hi <= upper)
    if not ok:
        limit = f" <= {upper:g}" if upper is not None else ""
        raise CommandError(f"{_flag(name)} {lo:g} {hi:g}: needs 0 < MIN <= MAX{limit}")


def check_recipe(r: Recipe) -> None:
    """Refuse values that would crash a run later or train on nonsense (one line each)."""
    for name in ("epochs", "batch_size", "lr_base_size", "recount"):
        if getattr(r, name) < 1:
            raise CommandError(f"{_flag(name)} must be >= 1, got {getattr(r, name)}")
    if r.num_workers < 0:
        raise CommandError(f"--workers must be >= 0, got {r.num_workers}")
    if r.img_size is not None and r.img_size < 16:
        raise CommandError(f"--img-size must be at least 16 pixels, got {r.img_size}")
    inf = float("inf")
    for name in ("lr", "lr_base"):
        _finite(r, name, 0.0, inf, closed_low=False, closed_high=False)
    for name in ("opt_eps", "weight_decay", "warmup_epochs", "warmup_lr", "min_lr", "mixup",
                 "cutmix", "color_jitter"):
        _finite(r, name, 0.0, inf, closed_high=False)
    for name in ("momentum", "mixup_prob", "mixup_switch_prob", "reprob", "hflip"):
        _finite(r, name, 0.0, 1.0)
    _finite(r, "smoothing", 0.0, 1.0, closed_high=False)
    _finite(r, "drop_path", 0.0, 1.0, closed_high=False)
    _finite(r, "model_ema_decay", 0.0, 1.0, closed_low=False, closed_high=False)
    _finite(r, "crop_pct", 0.0, 1.0, closed_low=False)
    _finite(r, "clip_grad", 0.0, inf, closed_low=False, closed_high=False)
    _pair(r, "scale", 1.0)
    _pair(r, "ratio", None)
    if (r.mixup > 0 or r.cutmix > 0) and r.batch_size % 2:
        raise CommandError(f"mixup/cutmix need an even --batch-size, got {r.batch_size}")
