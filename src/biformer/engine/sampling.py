"""Reproducible sampling and batching: an epoch can be restarted or resumed part-way.

The order of an epoch depends only on ``(seed, epoch)`` (:class:`EpochSampler`) and the
augmentation of each draw only on ``(seed, epoch, rank, position)`` (:class:`SeededSamples`), so a
resumed run, with any number of loader workers, sees the same augmented images as an
uninterrupted one. Samples are ``(image, target, skipped)`` (``skipped``: paths of unreadable
images met on the way); :func:`collate` stacks them into a :class:`Batch`.
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler

__all__ = [
    "Batch",
    "EpochSampler",
    "SeededSamples",
    "ShardSampler",
    "collate",
    "make_loader",
    "train_sampler",
]


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
