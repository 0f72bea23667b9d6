"""``biformer train``: the reference recipe on one CPU, one GPU or many machines (torchrun).

Without ``--data`` it trains the small demo BiFormer (``recipe.DEMO``) on the embedded digits;
with ``--data DIR`` (ImageFolder ``train/`` and ``val/``) or ``--dataset NAME`` (any timm
dataset) it follows BiFormer's ImageNet recipe (``recipe.REFERENCE``). Built from timm's
components: ``create_transform``, ``Mixup``, ``create_optimizer_v2``, ``create_scheduler_v2``,
``LabelSmoothingCrossEntropy`` / ``SoftTargetCrossEntropy``, ``ModelEmaV3``, ``NativeScaler``,
``dispatch_clip_grad``, ``accuracy``, ``distribute_bn``.

The parts: ``train_args`` (the command line), ``recipe`` and ``config`` (what the run is),
``session`` (everything built, a checkpoint restored), ``run_state`` (what a checkpoint saves),
``epoch`` (one epoch), ``evaluate``, ``signals`` (SIGTERM/SIGINT), ``run_folder`` (the output
folder), ``trainer`` (epochs, validation, checkpoints). Progress is never lost: ``last.pth`` is
replaced atomically after every epoch and when SIGTERM or SIGINT arrives (after the current
step); ``--out DIR`` resumes from ``DIR/last.pth``, part-way through an epoch included, and the
resumed run ends with the same weights as an uninterrupted one (deterministic mode, the default
on CPU).
"""

from __future__ import annotations

import argparse
import warnings
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..errors import CommandError
from .distributed import init_distributed, shutdown_distributed
from .run_folder import RunFolder
from .session import open_session
from .signals import StopFlag
from .train_args import add_arguments
from .trainer import run_session

__all__ = ["TrainResult", "add_arguments", "main", "train"]


@dataclass
class TrainResult:
    """What :func:`train` returns: the exit status, the final (plain) model and the summary."""

    exit_code: int
    model: nn.Module | None = None
    summary: dict[str, Any] = field(default_factory=dict)


def main(args: argparse.Namespace) -> int:
    return train(args).exit_code


def _open_folder(folder: RunFolder, env, say) -> None:
    """Rank 0 takes the output folder; every rank learns whether it could."""
    error = None
    try:
        folder.open(say)
    except CommandError as err:
        error = err
    if env.any(error is not None):
        raise error or CommandError("rank 0 could not open --out; see its message")


def train(args: argparse.Namespace) -> TrainResult:
    """Run ``biformer train`` with parsed ``args``; see the module docstring."""
    env = init_distributed(device=args.device)
    previous = torch.are_deterministic_algorithms_enabled(), torch.get_num_threads()
    stop = StopFlag()
    folder = RunFolder(args.out, enabled=env.is_main)
    try:
        _open_folder(folder, env, lambda text: print(text, flush=True) if env.is_main else None)
        with warnings.catch_warnings():
            # DDP compares the strides of size-1 dims of depthwise-conv weight grads: harmless
            warnings.filterwarnings("ignore", message="Grad strides do not match bucket view")
            session = open_session(args, env, stop, folder)
            status, summary = run_session(session)
        return TrainResult(exit_code=status, model=session.state.net, summary=summary)
    finally:
        folder.close()
        stop.restore()
        torch.use_deterministic_algorithms(previous[0])
        torch.set_num_threads(previous[1])
        shutdown_distributed()
