"""The state of a training run: exactly what ``last.pth`` saves and a resumed run restores.

``RunState`` holds the model, the optimizer, the gradient scaler, the EMA, the position reached
(``Position``), the per-epoch history and the best result. The learning-rate schedule is not
state: timm's schedulers are functions of the update count, so a resumed run rebuilds its
scheduler from the recipe and sets the rate of the position reached (``sync_schedule``).
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

__all__ = ["Position", "RunState", "weights_digest"]


@dataclass
class Position:
    """How far training got: ``epoch`` in progress (or next), ``step`` batches done in it, and
    the running sums of the epoch in progress."""

    epoch: int = 0
    step: int = 0
    num_updates: int = 0
    loss_sum: float = 0.0
    samples: int = 0
    skipped: int = 0
    seconds: float = 0.0

    def start_epoch(self) -> None:
        """Reset the running sums when an epoch starts from its first step."""
        if self.step == 0:
            self.loss_sum, self.samples, self.skipped, self.seconds = 0.0, 0, 0, 0.0

    def end_epoch(self) -> None:
        self.epoch, self.step = self.epoch + 1, 0


@dataclass
class RunState:
    """Model, optimizer, scaler, EMA, position, history and best result of one run."""

    net: nn.Module  # the plain model (not the DDP/compiled wrapper)
    optimizer: torch.optim.Optimizer
    scheduler: Any
    scaler: Any = None
    ema: Any = None  # timm ModelEmaV3
    position: Position = field(default_factory=Position)
    history: list[dict[str, Any]] = field(default_factory=list)
    best: dict[str, Any] = field(
        default_factory=lambda: {"val_top1": None, "epoch": None, "weights": None}
    )

    def state_dict(self) -> dict[str, Any]:
        """The resumable part of a checkpoint (tensors, numbers, strings, lists and dicts)."""
        return {
            "model": self.net.state_dict(),
            "ema": self.ema.module.state_dict() if self.ema is not None else None,
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
            "position": asdict(self.position),
            "history": list(self.history),
            "best": dict(self.best),
        }

    def load_state_dict(self, ckpt: dict[str, Any]) -> None:
        """Restore from a ``state_dict`` (an EMA switched on at resume starts from the weights)."""
        self.net.load_state_dict(ckpt["model"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        if self.scaler is not None and ckpt.get("scaler") is not None:
            self.scaler.load_state_dict(ckpt["scaler"])
        if self.ema is not None:
            if ckpt.get("ema") is not None:
                self.ema.module.load_state_dict(ckpt["ema"])
            else:
                self.ema.set(self.net)
        self.position = Position(**ckpt["position"])
        self.history = list(ckpt.get("history") or [])
        self.best = dict(ckpt.get("best") or self.best)
        self.sync_schedule()

    def sync_schedule(self) -> None:
        """Set the learning rate of the position reached (the scheduler is a function of it)."""
        if self.scheduler is not None and self.position.num_updates:
            self.scheduler.step_update(num_updates=self.position.num_updates)

    def best_weights(self) -> dict[str, torch.Tensor]:
        """The weights the best record names: the trained ones or the EMA's."""
        if self.best.get("weights") == "ema" and self.ema is not None:
            return self.ema.module.state_dict()
        return self.net.state_dict()

    def record(self, row: dict[str, Any], candidates: list[tuple[str, float]]) -> bool:
        """Append an epoch's ``row``; True when one of ``candidates`` (``(weights, top1)``)
        beats the best so far (which is then updated)."""
        self.history.append(row)
        which, top1 = max(candidates, key=lambda c: c[1])
        improved = math.isfinite(top1) and (self.best.get("val_top1") is None
                                            or top1 > self.best["val_top1"])
        if improved:
            self.best.update(val_top1=top1, epoch=self.position.epoch + 1, weights=which)
        return improved


def weights_digest(model: nn.Module) -> str:
    """SHA-256 of a model's state (names, dtypes, shapes and values), for comparing copies."""
    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        t = tensor.detach().to("cpu").contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)};".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()
