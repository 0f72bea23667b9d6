"""Opening images as 8-bit RGB, whatever their mode: the one way every command reads pixels.

``PIL.Image.convert("RGB")`` clips 16-bit (``I;16``), 32-bit integer (``I``) and float (``F``)
images to 0..255 instead of scaling them, which turns most of them into two grey levels. Here
they are scaled first: 16-bit images by 255/65535; 32-bit integer and float images by the range
their values fit (0..1 for float images in it, then 0..255, then 0..65535 — 16-bit data as PNG
and TIFF readers hand it over in mode ``I`` —, else their own min..max).

Other libraries may replace ``PIL.Image.open``: importing ultralytics installs an opener that,
on a file Pillow cannot identify, tries to load (and, online, pip-install) a HEIF plugin and
raises ``ImportError`` without it. Such an ``ImportError`` is reported here as what it is for
the caller: ``PIL.UnidentifiedImageError``, an unreadable image.
"""

from __future__ import annotations

import os
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

__all__ = ["open_rgb", "to_rgb"]

_WIDE_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I", "F")


def _value_range(mode: str, a: np.ndarray) -> tuple[float, float]:
    """The range that maps to 0..255 for a wide image of ``mode`` holding values ``a``."""
    lo, hi = (float(a.min()), float(a.max())) if a.size else (0.0, 1.0)
    if mode.startswith("I;16"):
        return 0.0, 65535.0
    if lo >= 0 and hi <= 1 and mode == "F":
        return 0.0, 1.0
    if lo >= 0 and hi <= 255:
        return 0.0, 255.0
    if lo >= 0 and hi <= 65535:
        return 0.0, 65535.0
    return lo, hi


def _scaled_to_8bit(img: Image.Image) -> Image.Image:
    """A wide single-channel image as mode ``L`` with its values scaled, not clipped."""
    a = np.asarray(img, dtype=np.float64)
    lo, hi = _value_range(img.mode, a)
    scale = 255.0 / (hi - lo) if hi > lo else 0.0
    a = np.nan_to_num((a - lo) * scale, nan=0.0, posinf=255.0, neginf=0.0)
    return Image.fromarray(np.clip(np.rint(a), 0, 255).astype(np.uint8), mode="L")


def to_rgb(img: Image.Image) -> Image.Image:
    """``img`` as an 8-bit RGB image (wide modes scaled, EXIF orientation applied)."""
    img = ImageOps.exif_transpose(img) or img
    if img.mode in _WIDE_MODES:
        img = _scaled_to_8bit(img)
    return img if img.mode == "RGB" else img.convert("RGB")


def _open(source: str | os.PathLike | BinaryIO) -> Image.Image:
    """``PIL.Image.open(source)``; an ``ImportError`` of a patched-in opener is unreadable."""
    try:
        return Image.open(source)
    except ImportError as err:
        name = getattr(source, "name", source)
        raise UnidentifiedImageError(f"cannot identify image file {str(name)!r}") from err


def open_rgb(source: str | os.PathLike | BinaryIO) -> Image.Image:
    """Open and decode ``source`` (a path or a binary file object) as RGB.

    Raises PIL's/OS errors for unreadable files (``UnidentifiedImageError`` is an ``OSError``).
    """
    with _open(source) as img:
        img.load()  # decode now: truncated files fail here, not later
        return to_rgb(img)
