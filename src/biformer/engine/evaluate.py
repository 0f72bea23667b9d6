"""Evaluation: loss and top-1 / top-5 accuracy over a loader, summed over ranks.

Also the two things evaluation needs to be set up like training was: the data configuration
(``model_data_config``: ours recorded in the checkpoint, or the model's) and the autocast dtype
(``amp_dtype_for``).
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from ..errors import CommandError
from .distributed import DistEnv
from .folders import UnreadableImagesError
from .logging import progress_bar

__all__ = ["amp_dtype_for", "evaluate", "model_data_config"]


def _scores(model: nn.Module, batch, env: DistEnv, autocast) -> tuple[torch.Tensor, float,
                                                                      float, int]:
    """Summed loss, top-1 and top-5 hits and the count of one batch."""
    from timm.utils import accuracy

    images = batch.images.to(env.device, non_blocking=True)
    targets = batch.targets.to(env.device, non_blocking=True)
    with autocast:
        logits = model(images)
    logits = logits.float()
    n = targets.shape[0]
    top1, top5 = accuracy(logits, targets, topk=(1, min(5, logits.shape[1])))
    return (F.cross_entropy(logits, targets, reduction="sum").double(),
            round(float(top1) * n / 100.0), round(float(top5) * n / 100.0), n)


def evaluate(
    model: nn.Module,
    loader: DataLoader,
    *,
    env: DistEnv,
    amp_dtype: torch.dtype | None = None,
    limit_batches: int | None = None,
    progress: bool = False,
    desc: str = "eval",
) -> dict[str, float]:
    """Loss (cross-entropy) and top-1 / top-5 accuracy (%) over ``loader``, summed over ranks.

    Returns ``{"loss", "top1", "top5", "count", "skipped"}``; ``skipped`` counts unreadable
    images left out.
    """
    model.eval()
    total = len(loader) if limit_batches is None else min(len(loader), limit_batches)
    sums = [torch.zeros((), dtype=torch.float64, device=env.device), 0.0, 0.0, 0]
    skipped = 0
    autocast = (torch.autocast(env.device.type, dtype=amp_dtype) if amp_dtype is not None
                else contextlib.nullcontext())
    bar = progress_bar(total, desc=desc, enabled=progress and env.is_main)
    try:
        with torch.no_grad():
            for i, batch in enumerate(loader):
                if i >= total:
                    break
                skipped += len(batch.skipped)
                bar.update(1)
                if batch.images.numel():
                    sums = [a + b for a, b in zip(sums, _scores(model, batch, env, autocast),
                                                  strict=True)]
    except UnreadableImagesError as err:
        raise CommandError(str(err).strip().splitlines()[-1]) from None
    finally:
        bar.close()
    loss, c1, c5, n, sk = env.all_reduce_sum(
        [float(sums[0].item()), float(sums[1]), float(sums[2]), float(sums[3]), float(skipped)])
    if n == 0:
        raise CommandError("no image of the validation set could be read")
    return {"loss": loss / n, "top1": 100.0 * c1 / n, "top5": 100.0 * c5 / n, "count": int(n),
            "skipped": int(sk)}


def model_data_config(model: nn.Module, record: dict[str, Any], img_size: int | None) -> dict:
    """The data config to evaluate with: ours (recorded in the checkpoint) or the model's."""
    from timm.data import resolve_data_config

    if record.get("data_config"):
        cfg = dict(record["data_config"])
    else:
        cfg = dict(resolve_data_config({}, model=model))
    if img_size is not None:
        cfg["input_size"] = (cfg["input_size"][0], img_size, img_size)
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in cfg.items()}


def amp_dtype_for(choice: str, device: torch.device) -> torch.dtype | None:
    """Autocast dtype for ``--amp`` on ``device`` (None: full precision)."""
    if device.type != "cuda" or choice == "none":
        if choice in ("bf16", "fp16") and device.type != "cuda":
            raise CommandError(f"--amp {choice} needs a CUDA device; use --amp none on the CPU")
        return None
    if choice == "fp16":
        return torch.float16
    if choice == "bf16" or torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float16
