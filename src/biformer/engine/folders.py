"""Image datasets on disk: ImageFolder layouts (checked, corrupt images skipped) and timm's.

Samples are ``(image, target, skipped)``: ``image`` after the transform, ``target`` an int,
``skipped`` the paths of unreadable images met on the way (a corrupt training image is replaced by
the next readable one; a corrupt evaluation image is dropped), so the loops can count them.
Pixels are read with ``biformer.engine.images.open_rgb`` (16-bit and float images scaled, not
clipped).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from PIL import Image
from torch.utils.data import Dataset

from ..errors import CommandError
from .images import open_rgb, to_rgb

__all__ = [
    "IMAGE_EXTENSIONS",
    "RobustImageFolder",
    "UnreadableImagesError",
    "check_image_folder",
    "class_names_of",
    "create_image_dataset",
    "find_split",
    "holdout",
    "parse_holdout",
]

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".ppm", ".gif", ".tif", ".tiff")
TIMM_DATASET_PREFIXES = ("torch", "hfds", "hfids", "tfds", "wds")
_MAX_CONSECUTIVE_FAILURES = 10
_SYNONYMS = {
    "train": ("train", "training"),
    "val": ("val", "validation", "valid", "eval", "evaluation"),
}


class UnreadableImagesError(RuntimeError):
    """Too many consecutive images failed to load."""


class RobustImageFolder(Dataset):
    """Images of a timm folder reader; unreadable files are reported instead of crashing.

    Args:
        reader: a timm reader (``reader[i] -> (file, target)``, ``reader.filename(i)``).
        transform: PIL -> tensor transform.
        replace_unreadable: ``True`` (training) loads the next readable image instead, ``False``
            (evaluation) returns ``None`` so that ``collate`` drops the sample.
        indices: the reader's samples this dataset shows (default all), e.g. a held-out split.
    """

    def __init__(self, reader: Any, *, transform: Callable | None, replace_unreadable: bool,
                 indices: Sequence[int] | None = None):
        self.reader = reader
        self.transform = transform
        self.replace_unreadable = replace_unreadable
        self.indices = list(range(len(reader))) if indices is None else list(indices)
        self.class_to_idx: dict[str, int] = dict(getattr(reader, "class_to_idx", {}) or {})
        self.classes = [c for c, _ in sorted(self.class_to_idx.items(), key=lambda kv: kv[1])]

    def __len__(self) -> int:
        return len(self.indices)

    def _path(self, i: int) -> str:
        try:
            return str(self.reader.filename(i, absolute=True))
        except Exception:  # noqa: BLE001 - readers without file names
            return f"sample {i}"

    def _load(self, i: int) -> tuple[Image.Image, int]:
        obj, target = self.reader[i]
        if isinstance(obj, Image.Image):
            return to_rgb(obj), int(target)
        with (obj if hasattr(obj, "read") else open(obj, "rb")) as f:
            return open_rgb(f), int(target)

    def targets(self) -> list[int]:
        """The class index of every sample (from the reader, without opening images)."""
        samples = getattr(self.reader, "samples", None)
        if samples is None:
            return [int(self.reader[i][1]) for i in self.indices]
        return [int(samples[i][1]) for i in self.indices]

    def __getitem__(self, index: int) -> tuple[Any, int, tuple[str, ...]]:
        skipped: list[str] = []
        for attempt in range(_MAX_CONSECUTIVE_FAILURES):
            i = self.indices[(index + attempt) % len(self.indices)]
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


def find_split(root: str, split: str) -> str | None:
    """``root/split`` or a timm synonym of it (``train``/``training``, ``val``/``validation``)."""
    for name in (split, *_SYNONYMS.get(split, ())):
        candidate = os.path.join(root, name)
        if os.path.isdir(candidate):
            return candidate
    return None


def _has_image(folder: str) -> bool:
    for _root, _dirs, files in os.walk(folder, followlinks=True):
        if any(f.lower().endswith(IMAGE_EXTENSIONS) for f in files):
            return True
    return False


def check_image_folder(folder: str, *, what: str) -> None:
    """Raise ``CommandError`` unless ``folder`` holds ``<class>/<image>`` files, every class
    folder with at least one image."""
    if not os.path.isdir(folder):
        raise CommandError(f"{what}: {folder} is not a directory")
    entries = list(os.scandir(folder))
    class_dirs = sorted((e for e in entries if e.is_dir() and not e.name.startswith(".")),
                        key=lambda e: e.name)
    loose = [e.name for e in entries if e.is_file() and e.name.lower().endswith(IMAGE_EXTENSIONS)]
    layout = f"{folder}/<class>/<image>"
    if not entries:
        raise CommandError(f"{what}: {folder} is empty; expected one folder per class ({layout})")
    if not class_dirs:
        found = f"{len(loose)} image(s) but " if loose else ""
        raise CommandError(f"{what}: {folder} has {found}no class folders; put each class's "
                           f"images in its own folder ({layout})")
    if loose:
        raise CommandError(f"{what}: {folder} has images outside any class folder (e.g. "
                           f"{loose[0]}); move them into {folder}/<class>/")
    empty = [d.name for d in class_dirs if not _has_image(d.path)]
    if len(empty) == len(class_dirs):
        raise CommandError(f"{what}: no images ({', '.join(IMAGE_EXTENSIONS)}) in the class "
                           f"folders of {folder}")
    if empty:
        raise CommandError(f"{what}: class folder {os.path.join(folder, empty[0])} has no images"
                           + (f" ({len(empty)} such folders)" if len(empty) > 1 else "")
                           + "; remove it or add its images")


def parse_holdout(value: str | None) -> float | None:
    """The fraction in ``--val-split FRACTION`` (``0 < f < 1``), or None for a folder name."""
    try:
        fraction = float(value) if value is not None else None
    except ValueError:
        return None
    if fraction is not None and not 0.0 < fraction < 1.0:
        raise CommandError(f"--val-split {value}: a held-out fraction must be between 0 and 1 "
                           "(e.g. 0.1), or give the name of the validation folder")
    return fraction


def holdout(dataset: RobustImageFolder, fraction: float, seed: int
            ) -> tuple[RobustImageFolder, RobustImageFolder]:
    """A seeded, stratified ``(train, val)`` split of ``dataset`` holding out ``fraction``."""
    targets = np.asarray(dataset.targets())
    rng = np.random.default_rng(seed)
    train_idx, val_idx = [], []
    for cls in np.unique(targets):
        members = np.flatnonzero(targets == cls)
        rng.shuffle(members)
        cut = max(1, int(round(fraction * len(members)))) if len(members) > 1 else 0
        val_idx += members[:cut].tolist()
        train_idx += members[cut:].tolist()
    pick = [dataset.indices[i] for i in sorted(train_idx)], [dataset.indices[i] for i in
                                                              sorted(val_idx)]
    return tuple(  # type: ignore[return-value]
        RobustImageFolder(dataset.reader, transform=None, replace_unreadable=train, indices=idx)
        for idx, train in zip(pick, (True, False), strict=True)
    )


def _folder_dataset(root: str, split: str | None, *, is_training: bool, flag: str,
                    class_map: dict[str, int] | None) -> RobustImageFolder:
    from timm.data import ImageDataset, create_dataset

    folder = root if split is None else find_split(root, split)
    if folder is None:
        raise CommandError(f"{flag} {root} has no {split}/ folder (expected "
                           f"{root}/{split}/<class>/<image>)")
    check_image_folder(folder, what=flag)
    if class_map is not None:
        found = sorted(e.name for e in os.scandir(folder) if e.is_dir() and
                       not e.name.startswith("."))
        unknown = sorted(set(found) - set(class_map))
        if unknown:  # a subset of the classes is fine: each folder keeps its class index
            raise CommandError(f"{flag} {folder}: its class folders differ from the model's "
                               f"classes ({len(unknown)} unknown, e.g. {unknown[:3]}; the "
                               f"model's: {sorted(class_map)[:5]}...)")
    ds = create_dataset("", root=folder, split=split or "", search_split=False,
                        class_map=class_map)
    assert isinstance(ds, ImageDataset)
    return RobustImageFolder(ds.reader, transform=None, replace_unreadable=is_training)


def create_image_dataset(
    name: str,
    root: str,
    split: str | None,
    *,
    is_training: bool,
    class_map: dict[str, int] | None = None,
    flag: str = "--data",
) -> Dataset:
    """An ImageFolder split (``name`` ``""``) or any dataset timm's ``create_dataset`` knows.

    ``split`` is a folder under ``root`` (it must exist), or None for ``root`` itself. Folder
    datasets are checked for their layout and return :class:`RobustImageFolder`; other timm
    datasets (``torch/cifar10``, ``hfds/...``, ...) are returned as timm builds them. The
    transform is set afterwards (``set_transform``).
    """
    from timm.data import create_dataset

    if not os.path.isdir(root):
        what = "no such directory" if not os.path.exists(root) else "is not a directory"
        raise CommandError(f"{flag} {root}: {what}")
    if not any(not entry.startswith(".") for entry in os.listdir(root)):
        raise CommandError(f"{flag} {root} is empty; expected {root}/train/<class>/<image> and "
                           f"{root}/val/<class>/<image> (or {root}/<class>/<image> to evaluate)")
    if name in ("", "folder", "imagefolder"):
        return _folder_dataset(root, split, is_training=is_training, flag=flag,
                               class_map=class_map)
    if name.partition("/")[0].lower() not in TIMM_DATASET_PREFIXES:
        raise CommandError(f"--dataset {name}: not a dataset timm knows; use a timm name "
                           "(torch/cifar10, hfds/..., hfids/..., tfds/..., wds/...), digits, or "
                           "leave --dataset out for an image folder")
    try:
        ds = create_dataset(name, root=root, split=split or "validation",
                            is_training=is_training)
    except Exception as err:  # noqa: BLE001 - timm/torchvision/HF raise many types here
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise CommandError(f"--dataset {name} at {root}: {first}") from None
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

    @property
    def transform(self) -> Any:
        return self.dataset.transform

    @transform.setter
    def transform(self, value: Any) -> None:
        self.dataset.transform = value

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> tuple[Any, int, tuple[str, ...]]:
        img, target = self.dataset[index][:2]
        return img, int(target), ()


def class_names_of(dataset: Dataset) -> list[str] | None:
    """The class names of ``dataset`` in index order, when it knows them."""
    inner = getattr(dataset, "dataset", dataset)
    names = getattr(dataset, "classes", None) or getattr(inner, "classes", None)
    return [str(n) for n in names] if names else None
