"""A small YOLO-format detection dataset made from scikit-learn's embedded handwritten digits.

Each image is a canvas (smooth random background with noise) with one to ``max_digits``
digits pasted at random sizes, colours and places, never overlapping. Labels are YOLO text files
(``class cx cy w h``, normalised, one line per digit; the box is the digit's tight ink box).
Train and validation canvases use disjoint sets of the 1,797 digit images (different writers'
samples), so validation measures generalisation. Nothing is downloaded.

    root/data.yaml, root/images/{train,val}/00000.png, root/labels/{train,val}/00000.txt
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

__all__ = ["DigitsDetection", "synthesize_digits"]

INK_THRESHOLD = 0.25  # fraction of full ink that counts as part of the digit's box


@dataclass(frozen=True)
class DigitsDetection:
    """What to synthesise.

    Args:
        train: training images.
        val: validation images.
        size: canvas side in pixels (square RGB images).
        max_digits: digits per image, drawn uniformly from 1..max_digits.
        min_frac, max_frac: digit side as a fraction of the canvas side.
        seed: random seed (the same seed writes the same files).
    """

    train: int = 320
    val: int = 80
    size: int = 128
    max_digits: int = 3
    min_frac: float = 0.2
    max_frac: float = 0.4
    seed: int = 0

    def check(self) -> None:
        if self.train < 1 or self.val < 1:
            raise ValueError(f"train and val must be at least 1 image, got {self.train}, "
                             f"{self.val}")
        if self.size < 32:
            raise ValueError(f"size must be at least 32 pixels, got {self.size}")
        if not 0 < self.min_frac <= self.max_frac <= 0.5:
            raise ValueError(f"need 0 < min_frac <= max_frac <= 0.5, got {self.min_frac}, "
                             f"{self.max_frac}")
        if self.max_digits < 1:
            raise ValueError(f"max_digits must be at least 1, got {self.max_digits}")


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """``[size, size, 3]`` float image: a random two-colour gradient plus noise."""
    a, b = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
    angle = rng.uniform(0, 2 * np.pi)
    yy, xx = np.mgrid[0:size, 0:size] / max(size - 1, 1)
    t = (np.cos(angle) * xx + np.sin(angle) * yy)
    t = (t - t.min()) / max(np.ptp(t), 1e-6)
    img = a * (1 - t[..., None]) + b * t[..., None]
    return img + rng.normal(0, 8, img.shape)


def _ink(digit: np.ndarray, side: int) -> np.ndarray:
    """An 8x8 digit (values 0..16) resized to ``[side, side]`` ink in [0, 1]."""
    small = Image.fromarray((digit / 16 * 255).astype(np.uint8))
    return np.asarray(small.resize((side, side), Image.BILINEAR), dtype=np.float64) / 255


def _place(rng, boxes: list, side: int, size: int, tries: int = 30) -> tuple[int, int] | None:
    """A top-left corner for a ``side``-pixel square that overlaps no box in ``boxes``."""
    for _ in range(tries):
        x, y = (int(v) for v in rng.integers(0, size - side + 1, 2))
        if all(x + side <= bx or bx + bs <= x or y + side <= by or by + bs <= y
               for bx, by, bs in boxes):
            return x, y
    return None


def _canvas(rng, spec: DigitsDetection, images: np.ndarray, labels: np.ndarray, pool: np.ndarray
            ) -> tuple[np.ndarray, list[str]]:
    """One ``[size, size, 3]`` uint8 image and its YOLO label lines."""
    size = spec.size
    img = _background(rng, size)
    squares, lines = [], []
    for _ in range(int(rng.integers(1, spec.max_digits + 1))):
        side = int(rng.uniform(spec.min_frac, spec.max_frac) * size)
        corner = _place(rng, squares, side, size)
        if corner is None:
            continue
        squares.append((*corner, side))
        k = int(rng.choice(pool))
        ink = _ink(images[k], side)
        x, y = corner
        patch = img[y:y + side, x:x + side]
        dark = patch.mean() > 128  # contrasting ink: dark on light backgrounds, light on dark
        colour = rng.uniform(0, 90, 3) if dark else rng.uniform(165, 255, 3)
        patch[:] = patch * (1 - ink[..., None]) + colour * ink[..., None]
        rows, cols = np.nonzero(ink >= INK_THRESHOLD)
        y0, y1, x0, x1 = y + rows.min(), y + rows.max() + 1, x + cols.min(), x + cols.max() + 1
        lines.append(f"{int(labels[k])} {(x0 + x1) / 2 / size:.6f} {(y0 + y1) / 2 / size:.6f} "
                     f"{(x1 - x0) / size:.6f} {(y1 - y0) / size:.6f}")
    return np.clip(img, 0, 255).astype(np.uint8), lines


def _write_split(root: Path, split: str, count: int, spec, rng, digits, pool) -> None:
    (root / "images" / split).mkdir(parents=True, exist_ok=True)
    (root / "labels" / split).mkdir(parents=True, exist_ok=True)
    for i in range(count):
        img, lines = _canvas(rng, spec, digits.images, digits.target, pool)
        Image.fromarray(img).save(root / "images" / split / f"{i:05d}.png")
        (root / "labels" / split / f"{i:05d}.txt").write_text("\n".join(lines) + "\n")


def synthesize_digits(root: str | Path, spec: DigitsDetection | None = None) -> Path:
    """Write the dataset under ``root`` and return the path of its ``data.yaml``.

    The YAML holds the absolute ``path``, ``train: images/train``, ``val: images/val`` and the
    ten class names ``"0"`` ... ``"9"``, as ultralytics' ``train(data=...)`` expects.
    """
    from sklearn.datasets import load_digits

    spec = spec or DigitsDetection()
    spec.check()
    root = Path(root).resolve()
    digits = load_digits()
    rng = np.random.default_rng(spec.seed)
    order = rng.permutation(len(digits.target))
    cut = int(0.8 * len(order))
    _write_split(root, "train", spec.train, spec, rng, digits, order[:cut])
    _write_split(root, "val", spec.val, spec, rng, digits, order[cut:])
    names = "\n".join(f"  {c}: '{c}'" for c in range(10))
    data = root / "data.yaml"
    data.write_text(f"path: {json.dumps(str(root))}\ntrain: images/train\nval: images/val\n"
                    f"names:\n{names}\n")
    return data
