"""One training epoch: forward, loss, backward, step, schedule, EMA; resumable mid-epoch.

Every 10 steps (and at the last one) the loop reports progress, checks that the loss is finite
and whether a stop signal arrived on any rank; ranks check at the same steps so that they stop
together. ``train_epoch`` returns True when a signal stopped it before the epoch's end.
"""

from __future__ import annotations

import contextlib
import math
import signal
import sys
import time
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..errors import CommandError, InputError
from .distributed import DistEnv
from .folders import UnreadableImagesError
from .logging import RunLog, progress_bar
from .run_state import RunState
from .signals import StopFlag

__all__ = ["EpochLoop", "train_epoch"]

REPORT_EVERY = 10


@dataclass(frozen=True)
class EpochLoop:
    """What one epoch needs besides the run state: the (wrapped) model and the step recipe."""

    model: nn.Module  # DDP / compiled wrapper of ``state.net`` (or the net itself)
    criterion: nn.Module
    mixup: Any  # timm Mixup or None
    amp_dtype: torch.dtype | None
    clip_grad: float | None
    clip_mode: str
    epochs: int
    model_name: str
    env: DistEnv
    stop: StopFlag
    log: RunLog

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.env.device.type, dtype=self.amp_dtype)


def _step(loop: EpochLoop, state: RunState, images: torch.Tensor,
          targets: torch.Tensor) -> torch.Tensor:
    """One optimisation step; returns the (detached) loss."""
    from timm.utils import dispatch_clip_grad

    if loop.mixup is not None:
        images, targets = loop.mixup(images, targets)
    try:
        with loop.autocast():
            loss = loop.criterion(loop.model(images), targets)
    except InputError:
        raise  # a setting of the user's (an environment variable): the command line says it
    except ValueError as err:  # the model rejects the input (size, channels, ...)
        raise CommandError(f"{loop.model_name} cannot take {tuple(images.shape)} inputs: "
                           f"{str(err).splitlines()[0]}") from None
    state.optimizer.zero_grad(set_to_none=True)
    params = state.net.parameters()
    if state.scaler is not None:
        state.scaler(loss, state.optimizer, clip_grad=loop.clip_grad, clip_mode=loop.clip_mode,
                     parameters=params)
    else:
        loss.backward()
        if loop.clip_grad is not None:
            dispatch_clip_grad(params, loop.clip_grad, mode=loop.clip_mode)
        state.optimizer.step()
    pos = state.position
    pos.num_updates += 1
    pos.step += 1
    if state.scheduler is not None:
        state.scheduler.step_update(num_updates=pos.num_updates)
    if state.ema is not None:
        state.ema.update(state.net, step=pos.num_updates)
    return loss.detach()


def _next_batch(loop: EpochLoop, it) -> Any:
    """The next batch, None at the end (or when a signal killed a loader worker)."""
    try:
        return next(it)
    except StopIteration:
        return None
    except UnreadableImagesError as err:
        raise CommandError(str(err).strip().splitlines()[-1]) from None
    except RuntimeError:
        if loop.stop.signum is not None:  # a loader worker died of the same signal
            return None
        raise


def _report(loop: EpochLoop, state: RunState, loss: torch.Tensor, bar, rate: float) -> bool:
    """Progress and TensorBoard; returns True when the loss is not finite."""
    lr = state.optimizer.param_groups[0]["lr"]
    loss_now = float(loss.item())
    bar.set_postfix_str(f"loss {loss_now:.3f}  lr {lr:.2e}  {rate:.0f} img/s")
    loop.log.scalars({"train/loss": loss_now, "train/lr": lr}, state.position.num_updates)
    return not math.isfinite(loss_now)


def train_epoch(loop: EpochLoop, state: RunState, loader, steps: int) -> bool:
    """Train from ``state.position.step`` to ``steps``; True when a signal stopped it."""
    env, pos = loop.env, state.position
    loop.model.train()
    bar = progress_bar(steps, desc=f"epoch {pos.epoch + 1}/{loop.epochs}", enabled=env.is_main,
                       initial=pos.step)
    loss_acc = torch.zeros((), dtype=torch.float64, device=env.device)
    samples_start, tick = pos.samples, time.perf_counter()
    interrupted = False
    it = iter(loader)
    try:
        while pos.step < steps:
            batch = _next_batch(loop, it)
            if batch is None:
                interrupted = loop.stop.signum is not None
                break
            pos.skipped += len(batch.skipped)
            if batch.skipped and env.is_main:
                for item in batch.skipped:
                    print(f"warning: unreadable image skipped: {item}", file=sys.stderr)
            images = batch.images.to(env.device, non_blocking=True)  # B, C, H, W
            loss = _step(loop, state, images, batch.targets.to(env.device, non_blocking=True))
            loss_acc += loss.double() * images.shape[0]
            pos.samples += images.shape[0]
            bar.update(1)
            report = pos.step % REPORT_EVERY == 0 or pos.step == steps
            nonfinite = False
            if report:
                rate = (pos.samples - samples_start) * env.world_size / max(
                    time.perf_counter() - tick, 1e-9)
                nonfinite = _report(loop, state, loss, bar, rate)
            if report or not env.distributed:
                signalled, diverged = env.all_reduce_sum(
                    [float(loop.stop.signum is not None), float(nonfinite)])
                if diverged:
                    raise CommandError(
                        f"the training loss is not finite at epoch {pos.epoch + 1} step "
                        f"{pos.step}; lower --lr or set --clip-grad (last.pth holds the last "
                        "finished epoch)")
                if signalled:
                    loop.stop.signum = loop.stop.signum or signal.SIGTERM  # another rank
                    interrupted = pos.step < steps
                    break
    finally:
        bar.close()
        del it
        pos.loss_sum += float(loss_acc.item())
        pos.seconds += time.perf_counter() - tick
    return interrupted
