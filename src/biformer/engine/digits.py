"""The embedded default dataset: scikit-learn's handwritten digits (1,797 real 8x8 images)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from PIL import Image
from torch.utils.data import Dataset

__all__ = ["DIGITS", "DigitsDataset", "digits_dataset"]

DIGITS = "digits"


class DigitsDataset(Dataset):
    """scikit-learn's digits as PIL RGB images (8x8, upsampled by the transform), 10 classes.

    Fixed stratified split: 1,437 training and 360 validation images (``random_state=0``).
    Samples are ``(image, target, ())`` (no unreadable images here).
    """

    def __init__(self, split: str, *, transform: Callable | None = None):
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split

        if split not in ("train", "val"):
            raise ValueError(f"split must be 'train' or 'val', got {split!r}")
        digits = load_digits()
        images = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)  # N, 8, 8
        index = np.arange(len(images))
        train_idx, val_idx = train_test_split(
            index, test_size=0.2, random_state=0, stratify=digits.target
        )
        chosen = np.sort(train_idx if split == "train" else val_idx)
        self.images = images[chosen]
        self.targets = digits.target[chosen].astype(np.int64)
        self.classes = [str(c) for c in range(10)]
        self.transform = transform

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int) -> tuple[Any, int, tuple[str, ...]]:
        img = Image.fromarray(self.images[index]).convert("RGB")
        if self.transform is not None:
            img = self.transform(img)
        return img, int(self.targets[index]), ()


def digits_dataset(split: str, *, transform: Callable | None = None) -> DigitsDataset:
    """The embedded digits dataset, ``split`` ``"train"`` (1,437) or ``"val"`` (360)."""
    return DigitsDataset(split, transform=transform)
