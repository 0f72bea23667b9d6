"""Sizes and costs of YOLO models: parameters, GFLOPs, and timing hooks for ultralytics training.

Two GFLOPs figures, both 2 FLOPs per multiply-add:

- ``gflops``: ``torch.utils.flop_counter`` on one forward pass (convolutions and every matmul,
  the attention of BRA and C2PSA included), with BRA on the ``reference`` backend (the same
  arithmetic as the default backend, written as plain matmuls that the counter sees);
- ``ultralytics_gflops``: what ``model.info()`` prints (thop: per-module hooks, which count
  convolutions, normalisation and activations but no functional matmul, so no attention).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from ...ops import use_backend

__all__ = ["EpochTimer", "gflops", "num_params", "ultralytics_gflops"]


def num_params(model: nn.Module) -> int:
    """Number of parameters (trainable or not)."""
    return sum(p.numel() for p in model.parameters())


def _size(imgsz: int | tuple[int, int]) -> tuple[int, int]:
    return (imgsz, imgsz) if isinstance(imgsz, int) else tuple(imgsz)


@torch.no_grad()
def gflops(model: nn.Module, imgsz: int | tuple[int, int] = 640) -> float:
    """GFLOPs of one ``[1, 3, H, W]`` forward pass in eval mode, counted by torch (see above)."""
    was_training = model.training
    model.eval()
    param = next(model.parameters())
    image = torch.zeros(1, 3, *_size(imgsz), dtype=param.dtype, device=param.device)
    counter = FlopCounterMode(display=False)
    try:
        with use_backend("reference"), counter:
            model(image)
    finally:
        model.train(was_training)
    return counter.get_total_flops() / 1e9


def ultralytics_gflops(model: nn.Module, imgsz: int = 640) -> float:
    """ultralytics' own GFLOPs figure (thop), as ``model.info()`` prints it (0.0 without thop)."""
    from ultralytics.utils.torch_utils import get_flops

    return float(get_flops(model, imgsz))


@dataclass
class EpochTimer:
    """ultralytics trainer callbacks that time the training part of every epoch.

    ``add_to(yolo)`` registers them; ``images_per_second`` is training images (one pass over the
    training set per epoch) divided by the time between each epoch's start and end callbacks
    (data loading, forward, backward and optimizer steps; validation is not included).
    """

    seconds: list[float] = field(default_factory=list)
    images: int = 0
    _start: float = 0.0

    def add_to(self, yolo) -> EpochTimer:
        yolo.add_callback("on_train_epoch_start", self._on_start)
        yolo.add_callback("on_train_epoch_end", self._on_end)
        return self

    def _on_start(self, trainer) -> None:
        self._start = time.perf_counter()

    def _on_end(self, trainer) -> None:
        self.seconds.append(time.perf_counter() - self._start)
        self.images += len(trainer.train_loader.dataset)

    @property
    def images_per_second(self) -> float:
        total = sum(self.seconds)
        return self.images / total if total else float("nan")
