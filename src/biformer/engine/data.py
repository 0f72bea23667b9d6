"""Datasets and loaders: the embedded digits, image folders, any timm dataset.

Samples are ``(image, target, skipped)``: ``image`` a CHW float tensor after the transform,
``target`` an int, ``skipped`` the paths of unreadable images met on the way (a corrupt training
image is replaced by the next readable one; a corrupt evaluation image is dropped), so the loop can
count them. :func:`collate` stacks a batch into ``(images [B, C, H, W], targets [B], skipped)``.

Reproducibility: the order of an epoch depends only on ``(seed, epoch)`` (:class:`EpochSampler`)
and the augmentation of each draw only on ``(seed, epoch, rank, position)``
(:class:`SeededSamples`), so an epoch can be restarted or resumed part-way, with any number of
loader workers, and see the same augmented images.
"""

from __future__ import annotations

import os
import random
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler

from ..errors import CommandError

__all__ = [
    "DIGITS",
    "EpochSampler",
    "RobustImageFolder",
    "SeededSamples",
    "ShardSampler",
    "UnreadableImagesError",
    "collate",
    "create_image_dataset",
    "digits_dataset",
    "make_loader",
]

DIGITS = "digits"
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".ppm", ".gif", ".tif", ".tiff")
_MAX_CONSECUTIVE_FAILURES = 10


class UnreadableImagesError(RuntimeError):
    """Too many consecutive images failed to load."""


# --------------------------------------------------------------------------------------------
# The embedded default: scikit-learn's handwritten digits (1,797 real 8x8 images, 10 classes)


class DigitsDataset(Dataset):
    """scikit-learn's digits as PIL RGB images (8x8, upsampled by the transform).

    Fixed stratified split: 1,437 training and 360 validation images (``random_state=0``).
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


# --------------------------------------------------------------------------------------------
# Image folders (ImageFolder layout), with corrupt images counted and skipped


class RobustImageFolder(Dataset):
    """Images of a timm folder reader; unreadable files are reported instead of crashing.

    Args:
        reader: a timm reader (``reader[i] -> (file, target)``, ``reader.filename(i)``).
        transform: PIL -> tensor transform.
        replace_unreadable: ``True`` (training) loads the next readable image instead, ``False``
            (evaluation) returns ``None`` so that :func:`collate` drops the sample.
    """

    def __init__(self, reader: Any, *, transform: Callable | None, replace_unreadable: bool):
        self.reader = reader
        self.transform = transform
        self.replace_unreadable = replace_unreadable
        self.class_to_idx: dict[str, int] = dict(getattr(reader, "class_to_idx", {}) or {})
        self.classes = [c for c, _ in sorted(self.class_to_idx.items(), key=lambda kv: kv[1])]

    def __len__(self) -> int:
        return len(self.reader)

    def _path(self, index: int) -> str:
        try:
            return str(self.reader.filename(index, absolute=True))
        except Exception:  # readers without file names
            return f"sample {index}"

    def _load(self, index: int) -> tuple[Image.Image, int]:
        obj, target = self.reader[index]
        if hasattr(obj, "read"):
            with obj:
                img = Image.open(obj)
                img = img.convert("RGB")  # decodes the pixels: truncated files fail here
        else:
            img = obj.convert("RGB") if isinstance(obj, Image.Image) else Image.open(obj)
        return img, int(target)

    def __getitem__(self, index: int) -> tuple[Any, int, tuple[str, ...]]:
        skipped: list[str] = []
        for attempt in range(_MAX_CONSECUTIVE_FAILURES):
            i = (index + attempt) % len(self.reader)
            try:
                img, target = self._load(i)
            except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as err:
                reason = str(err).splitlines()[0] if str(err) else type(err).__name__
                skipped.append(f"{self._path(i)} ({reason})")
                if not self.replace_unreadable:
                    return None, -1, tuple(skipped)
                continue
            if self.transform is not None:
                img = self.transform(img)
            return img, target, tuple(skipped)
        raise UnreadableImagesError(
            f"{_MAX_CONSECUTIVE_FAILURES} consecutive images could not be read, first: "
            f"{skipped[0]}"
        )


def _split_dir(root: str, split: str) -> str | None:
    """``root/split`` or a timm synonym of it (``train``/``training``, ``val``/``validation``)."""
    synonyms = {
        "train": ("train", "training"),
        "val": ("val", "validation", "valid", "eval", "evaluation"),
    }
    for name in (split, *synonyms.get(split, ())):
        candidate = os.path.join(root, name)
        if os.path.isdir(candidate):
            return candidate
    return None


def check_image_folder(folder: str, *, what: str) -> None:
    """Raise :class:`CommandError` unless ``folder`` holds ``<class>/<image>`` files."""
    if not os.path.isdir(folder):
        raise CommandError(f"{what}: {folder} is not a directory")
    entries = list(os.scandir(folder))
    class_dirs = [e for e in entries if e.is_dir() and not e.name.startswith(".")]
    loose = [e.name for e in entries if e.is_file() and e.name.lower().endswith(IMAGE_EXTENSIONS)]
    if not entries:
        raise CommandError(
            f"{what}: {folder} is empty; expected one folder per class holding its images "
            f"({folder}/<class>/<image>)"
        )
    if not class_dirs:
        found = f"{len(loose)} image(s) but " if loose else ""
        raise CommandError(
            f"{what}: {folder} has {found}no class folders; put each class's images in its own "
            f"folder ({folder}/<class>/<image>)"
        )
    if loose:
        raise CommandError(
            f"{what}: {folder} has images outside any class folder (e.g. {loose[0]}); move them "
            f"into {folder}/<class>/"
        )
    for d in class_dirs:
        for _root, _dirs, files in os.walk(d.path, followlinks=True):
            if any(f.lower().endswith(IMAGE_EXTENSIONS) for f in files):
                return
    raise CommandError(
        f"{what}: no images ({', '.join(IMAGE_EXTENSIONS)}) in the class folders of {folder}"
    )


def resolve_split_folder(root: str, split: str, *, flag: str, required: bool) -> str:
    """The folder of ``split`` under ``root`` (``root`` itself when ``required`` is false)."""
    if not os.path.exists(root):
        raise CommandError(f"{flag} {root}: no such directory")
    if not os.path.isdir(root):
        raise CommandError(f"{flag} {root} is not a directory")
    if not any(not name.startswith(".") for name in os.listdir(root)):
        layout = (f"{root}/train/<class>/<image> and {root}/val/<class>/<image>" if required
                  else f"{root}/{split}/<class>/<image> or {root}/<class>/<image>")
        raise CommandError(f"{flag} {root} is empty; expected {layout}")
    found = _split_dir(root, split)
    if found is None:
        if required:
            raise CommandError(
                f"{flag} {root} has no {split}/ folder; expected {root}/train/<class>/<image> "
                f"and {root}/val/<class>/<image>"
            )
        return root
    return found


def create_image_dataset(
    name: str,
    root: str,
    split: str,
    *,
    transform: Callable | None,
    is_training: bool,
    class_map: dict[str, int] | None = None,
    flag: str = "--data",
) -> Dataset:
    """An ImageFolder split (``name`` ``""``) or any dataset timm's ``create_dataset`` knows.

    Folder datasets are checked for their layout first and return :class:`RobustImageFolder`;
    other timm datasets (``torch/cifar10``, ``hfds/...``, ...) are returned as timm builds them,
    with ``transform`` set. ``class_map`` fixes the class index of each folder name.
    """
    from timm.data import ImageDataset, create_dataset

    if name in ("", "folder", "imagefolder"):
        folder = resolve_split_folder(root, split, flag=flag, required=is_training)
        check_image_folder(folder, what=flag)
        ds = create_dataset("", root=folder, split=split, search_split=False, class_map=class_map)
        assert isinstance(ds, ImageDataset)
        return RobustImageFolder(ds.reader, transform=transform, replace_unreadable=is_training)
    try:
        ds = create_dataset(name, root=root, split=split, is_training=is_training)
    except (AssertionError, RuntimeError, OSError, ValueError) as err:
        raise CommandError(f"--dataset {name} at {root}: {str(err).splitlines()[0]}") from None
    ds.transform = transform
    return _TimmSamples(ds)


class _TimmSamples(Dataset):
    """Adapts a timm/torchvision dataset's ``(image, target)`` samples to ours."""

    def __init__(self, dataset: Any):
        self.dataset = dataset
        classes = getattr(dataset, "classes", None)
        reader = getattr(dataset, "reader", None)
        mapping = getattr(reader, "class_to_idx", None) or getattr(dataset, "class_to_idx", None)
        if classes is None and mapping:
            classes = [c for c, _ in sorted(mapping.items(), key=lambda kv: kv[1])]
        self.classes = list(classes) if classes is not None else None

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> tuple[Any, int, tuple[str, ...]]:
        img, target = self.dataset[index][:2]
        return img, int(target), ()


# --------------------------------------------------------------------------------------------
# Reproducible sampling and augmentation


class SeededSamples(Dataset):
    """Makes the random augmentation of a training sample a function of where it is drawn.

    Indexed with the keys of :class:`EpochSampler`, ``(index, rank, position)``: the random
    generators are seeded from ``(seed, epoch, rank, position)``, so every draw is reproducible
    (restarts, resumes, any number of workers) and two draws of the same image in an epoch
    (repeated augmentation) are augmented differently. Python's, NumPy's and torch's global
    generators are restored afterwards: the process's own random streams are untouched.
    """

    def __init__(self, dataset: Dataset, *, seed: int):
        self.dataset = dataset
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, key: tuple[int, int, int]) -> Any:
        index, rank, position = (int(k) for k in key)
        seed = np.random.SeedSequence([self.seed, self.epoch, rank, position]).generate_state(2)
        py_state, np_state = random.getstate(), np.random.get_state()
        torch_state = torch.random.get_rng_state()
        random.seed(int(seed[0]))
        np.random.seed(int(seed[0]))
        # the CPU generator only: torch.manual_seed would also queue a (costly) CUDA reseed
        torch.random.default_generator.manual_seed(int(seed[1]))
        try:
            return self.dataset[index]
        finally:
            random.setstate(py_state)
            np.random.set_state(np_state)
            torch.random.set_rng_state(torch_state)


class EpochSampler(Sampler[tuple[int, int, int]]):
    """Training order of one rank: a function of (seed, epoch), resumable part-way.

    Wraps torch's ``DistributedSampler`` (a world of one included) or timm's repeated-augmentation
    sampler and yields ``(index, rank, position)`` keys for :class:`SeededSamples`; ``skip``
    drops the first samples of the epoch (those already trained on).
    """

    def __init__(self, base: Sampler[int], *, rank: int):
        self.base = base
        self.rank = rank
        self.skip = 0

    def set_epoch(self, epoch: int, *, skip: int = 0) -> None:
        self.base.set_epoch(epoch)  # type: ignore[attr-defined]
        self.skip = skip

    def __iter__(self) -> Iterator[tuple[int, int, int]]:
        order = list(iter(self.base))
        return ((order[p], self.rank, p) for p in range(self.skip, len(order)))

    def __len__(self) -> int:
        return max(len(self.base) - self.skip, 0)  # type: ignore[arg-type]


def train_sampler(
    dataset: Dataset, *, rank: int, world_size: int, seed: int, repeated_aug: bool
) -> EpochSampler:
    """Shuffled per-epoch order of this rank's share of ``dataset``."""
    if repeated_aug and world_size > 1:
        from timm.data.distributed_sampler import RepeatAugSampler

        # its order depends on the epoch only (seed ignored), as in DeiT
        base: Sampler[int] = RepeatAugSampler(
            dataset, num_replicas=world_size, rank=rank, shuffle=True
        )
    else:
        base = DistributedSampler(
            dataset, num_replicas=world_size, rank=rank, shuffle=True, seed=seed, drop_last=False
        )
    return EpochSampler(base, rank=rank)


class ShardSampler(Sampler[int]):
    """Evaluation share of one rank: indices ``rank, rank + world, ...`` (no padding)."""

    def __init__(self, length: int, *, rank: int, world_size: int):
        self.indices = list(range(rank, length, world_size))

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


@dataclass
class Batch:
    images: torch.Tensor  # B, C, H, W
    targets: torch.Tensor  # B
    skipped: list[str]


def collate(samples: Sequence[tuple[Any, int, tuple[str, ...]]]) -> Batch:
    """Stack readable samples into a :class:`Batch`; dropped (``None``) images are left out."""
    kept = [(img, t) for img, t, _ in samples if img is not None]
    skipped = [p for _, _, paths in samples for p in paths]
    if kept:
        images = torch.stack([img for img, _ in kept])
        targets = torch.tensor([t for _, t in kept], dtype=torch.int64)
    else:
        images, targets = torch.empty(0), torch.empty(0, dtype=torch.int64)
    return Batch(images, targets, skipped)


def make_loader(
    dataset: Dataset,
    *,
    batch_size: int,
    sampler: Sampler[int],
    num_workers: int,
    drop_last: bool,
    pin_memory: bool,
) -> DataLoader:
    """A DataLoader whose workers are re-created every epoch (they see :meth:`set_epoch`)."""
    generator = torch.Generator()
    generator.manual_seed(0)  # worker base seeds; augmentation is seeded per sample instead
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=num_workers,
        collate_fn=collate,
        drop_last=drop_last,
        pin_memory=pin_memory,
        generator=generator,
        persistent_workers=False,
    )


def class_names_of(dataset: Dataset) -> list[str] | None:
    """The class names of ``dataset`` in index order, when it knows them."""
    inner = dataset.dataset if isinstance(dataset, SeededSamples) else dataset
    names = getattr(inner, "classes", None)
    return [str(n) for n in names] if names else None
