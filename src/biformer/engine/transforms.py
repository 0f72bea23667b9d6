"""Training and evaluation transforms: timm's, with RandAugment's posterize made total.

timm's RandAugment ``rand-m9-mstd0.5-inc1`` (the reference recipe) draws each op's magnitude from
``N(9, 0.5)`` clipped to 10. At exactly 10, ``PosterizeIncreasing`` asks for 0 bits ("keep 0 of
the 8 most significant bits", a black image in the original TensorFlow/UDA definition and in the
Pillow releases the reference trained with), which current Pillow refuses with ``ValueError:
bits must be between or equal to 1 and 8``: about one image in a thousand, so a run dies in its
first epoch. ``create_train_transform`` keeps the op and gives 0 bits its original meaning.
"""

from __future__ import annotations

from typing import Any

from PIL import Image, ImageOps

__all__ = ["create_eval_transform", "create_train_transform", "posterize"]


def posterize(img: Image.Image, bits_to_keep: int, **_: Any) -> Image.Image:
    """Keep the ``bits_to_keep`` most significant bits of every channel (0: all black)."""
    bits = int(bits_to_keep)
    if bits >= 8:
        return img
    if bits <= 0:
        return img.point(lambda _v: 0)
    return ImageOps.posterize(img, bits)


def _total_posterize(transform: Any) -> int:
    """Point every posterize op of the RandAugment/AutoAugment inside ``transform`` at
    ``posterize``; returns how many were patched."""
    patched = 0
    for t in getattr(transform, "transforms", [transform]):
        for op in (getattr(t, "ops", None) or []) + list(getattr(t, "policy", None) or []):
            policy = op if isinstance(op, (list, tuple)) else [op]  # AutoAugment sub-policies
            for sub in policy:
                if str(getattr(sub, "name", "")).startswith("Posterize"):
                    sub.aug_fn = posterize
                    patched += 1
    return patched


def create_train_transform(recipe: Any, data_config: dict[str, Any]):
    """timm's training transform for ``recipe`` (``biformer.engine.recipe.Recipe``)."""
    from timm.data import create_transform

    transform = create_transform(
        input_size=tuple(data_config["input_size"]),
        is_training=True,
        scale=tuple(recipe.scale),
        ratio=tuple(recipe.ratio),
        hflip=recipe.hflip,
        color_jitter=recipe.color_jitter,
        auto_augment=recipe.aa,
        interpolation=recipe.train_interpolation,
        mean=tuple(data_config["mean"]),
        std=tuple(data_config["std"]),
        re_prob=recipe.reprob,
        re_mode=recipe.remode,
        re_count=recipe.recount,
    )
    _total_posterize(transform)
    return transform


def create_eval_transform(data_config: dict[str, Any]):
    """timm's evaluation transform (resize, centre crop, normalise) for ``data_config``."""
    from timm.data import create_transform

    return create_transform(
        input_size=tuple(data_config["input_size"]),
        is_training=False,
        interpolation=data_config.get("interpolation", "bicubic"),
        mean=tuple(data_config["mean"]),
        std=tuple(data_config["std"]),
        crop_pct=data_config.get("crop_pct"),
        crop_mode=data_config.get("crop_mode"),
    )
