"""``biformer eval``: top-1 / top-5 accuracy and loss of a model on a validation set.

Loads official checkpoints and ours through ``biformer.load_checkpoint`` and evaluates with the
model's own data configuration (resize, crop, interpolation, mean, std; our checkpoints record
theirs). Under torchrun the validation set is split over the ranks and the counts are summed.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from ..errors import CommandError
from .data import (
    DIGITS,
    ShardSampler,
    UnreadableImagesError,
    create_image_dataset,
    digits_dataset,
    make_loader,
)
from .distributed import DistEnv, init_distributed, shutdown_distributed
from .logging import progress_bar

__all__ = ["add_arguments", "eval_transform", "evaluate", "main"]


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
    from timm.utils import accuracy

    model.eval()
    total = len(loader) if limit_batches is None else min(len(loader), limit_batches)
    loss_sum = torch.zeros((), dtype=torch.float64, device=env.device)
    correct1 = correct5 = 0.0
    count = skipped = 0
    autocast = (
        torch.autocast(env.device.type, dtype=amp_dtype)
        if amp_dtype is not None
        else contextlib.nullcontext()
    )
    bar = progress_bar(total, desc=desc, enabled=progress and env.is_main)
    try:
        with torch.no_grad():
            for i, batch in enumerate(loader):
                if i >= total:
                    break
                skipped += len(batch.skipped)
                bar.update(1)
                if batch.images.numel() == 0:
                    continue
                images = batch.images.to(env.device, non_blocking=True)
                targets = batch.targets.to(env.device, non_blocking=True)
                with autocast:
                    logits = model(images)
                logits = logits.float()
                n = targets.shape[0]
                loss_sum += F.cross_entropy(logits, targets, reduction="sum").double()
                k5 = min(5, logits.shape[1])
                top1, top5 = accuracy(logits, targets, topk=(1, k5))
                correct1 += round(float(top1) * n / 100.0)
                correct5 += round(float(top5) * n / 100.0)
                count += n
    except UnreadableImagesError as err:
        raise CommandError(str(err).strip().splitlines()[-1]) from None
    finally:
        bar.close()
    loss, c1, c5, n, sk = env.all_reduce_sum(
        [float(loss_sum.item()), correct1, correct5, float(count), float(skipped)]
    )
    if n == 0:
        raise CommandError("no image of the validation set could be read")
    return {
        "loss": loss / n,
        "top1": 100.0 * c1 / n,
        "top5": 100.0 * c5 / n,
        "count": int(n),
        "skipped": int(sk),
    }


def eval_transform(data_config: dict[str, Any]):
    """timm's evaluation transform (resize, center crop, normalise) for ``data_config``."""
    from timm.data import create_transform

    return create_transform(
        input_size=tuple(data_config["input_size"]),
        is_training=False,
        interpolation=data_config.get("interpolation", "bicubic"),
        mean=tuple(data_config["mean"]),
        std=tuple(data_config["std"]),
        crop_pct=data_config.get("crop_pct"),
        crop_mode=data_config.get("crop_mode"),
    )


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


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", metavar="PATH", required=True,
                        help="weights: an official BiFormer file or ours (.pth/.safetensors)")
    parser.add_argument("--model", metavar="NAME", default=None,
                        help="model name (default: the one recorded in our checkpoints)")
    parser.add_argument("--model-kwargs", nargs="*", metavar="KEY=VALUE", default=None,
                        help="model constructor options (default: recorded in our checkpoints)")
    parser.add_argument("--num-classes", type=int, default=None,
                        help="classifier size (default: recorded in our checkpoints, else 1000)")
    parser.add_argument("--data", metavar="DIR", default=None,
                        help="validation images: DIR/<split>/<class>/<image> or "
                        "DIR/<class>/<image> (default for digits checkpoints: the embedded set)")
    parser.add_argument("--dataset", metavar="NAME", default=None,
                        help="timm dataset name (default: image folder)")
    parser.add_argument("--split", default="val", help="split folder inside --data (default val)")
    parser.add_argument("--ema", action="store_true",
                        help="evaluate the EMA weights of a checkpoint trained with --model-ema")
    parser.add_argument("--img-size", type=int, default=None, help="override the input size")
    parser.add_argument("--batch-size", type=int, default=64, help="per process (default 64)")
    parser.add_argument("--workers", type=int, default=4, help="loader processes (default 4)")
    parser.add_argument("--device", default=None, help="cuda or cpu (default: cuda if available)")
    parser.add_argument("--threads", type=int, default=None,
                        help="CPU threads (default: 1 for digits checkpoints, else PyTorch's)")
    parser.add_argument("--amp", choices=("auto", "bf16", "fp16", "none"), default="auto",
                        help="autocast dtype on CUDA (auto: bf16 where supported); CPU: none")
    parser.add_argument("--limit-batches", type=int, default=None, metavar="N",
                        help="evaluate only the first N batches (smoke tests)")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")


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


def _load_for_eval(args: argparse.Namespace) -> tuple[nn.Module, dict[str, Any]]:
    from .modeling import model_from_checkpoint

    return model_from_checkpoint(
        args.checkpoint, model=args.model, model_kwargs=args.model_kwargs,
        num_classes=args.num_classes, use_ema=args.ema,
    )


def main(args: argparse.Namespace) -> int:
    env = init_distributed(device=args.device)
    threads = torch.get_num_threads()
    try:
        return _main(args, env)
    finally:
        torch.set_num_threads(threads)
        shutdown_distributed()


def _main(args: argparse.Namespace, env: DistEnv) -> int:
    if args.batch_size < 1:
        raise CommandError(f"--batch-size must be >= 1, got {args.batch_size}")
    model, record = _load_for_eval(args)
    threads = args.threads
    if threads is None and record.get("dataset") == DIGITS and env.device.type == "cpu":
        from .recipe import DEMO_THREADS

        threads = DEMO_THREADS
    if threads is not None:
        if threads < 1:
            raise CommandError(f"--threads must be >= 1, got {threads}")
        torch.set_num_threads(threads)
    data_config = model_data_config(model, record, args.img_size)
    transform = eval_transform(data_config)
    class_names = record.get("class_names")
    dataset_name = args.dataset if args.dataset is not None else ""
    if args.data is None:
        if record.get("dataset") == DIGITS or args.dataset == DIGITS:
            dataset = digits_dataset("val", transform=transform)
            source = "embedded digits (val)"
        else:
            raise CommandError("--data DIR is needed: the validation images to evaluate on")
    else:
        class_map = {n: i for i, n in enumerate(class_names)} if class_names else None
        dataset = create_image_dataset(
            dataset_name, args.data, args.split, transform=transform, is_training=False,
            class_map=class_map,
        )
        source = args.data
        folder_classes = getattr(dataset, "classes", None)
        num_classes = getattr(model, "num_classes", None)
        mismatch = folder_classes and num_classes and len(folder_classes) != num_classes
        if not class_names and mismatch:
            raise CommandError(
                f"--data {args.data} has {len(folder_classes)} class folders but the model has "
                f"{num_classes} classes; evaluate on one folder per class of the model"
            )
    model.to(env.device)
    sampler = ShardSampler(len(dataset), rank=env.rank, world_size=env.world_size)
    loader = make_loader(dataset, batch_size=args.batch_size, sampler=sampler,
                         num_workers=args.workers, drop_last=False,
                         pin_memory=env.device.type == "cuda")
    start = time.perf_counter()
    metrics = evaluate(model, loader, env=env, amp_dtype=amp_dtype_for(args.amp, env.device),
                       limit_batches=args.limit_batches, progress=True)
    metrics["seconds"] = time.perf_counter() - start
    if env.is_main:
        if metrics["skipped"]:
            print(f"warning: {metrics['skipped']} unreadable image(s) skipped", file=sys.stderr)
        if args.json:
            print(json.dumps({"checkpoint": os.path.abspath(args.checkpoint), "data": source,
                              **metrics}))
        else:
            print(f"{source}: {metrics['count']} images  top-1 {metrics['top1']:.3f}  "
                  f"top-5 {metrics['top5']:.3f}  loss {metrics['loss']:.4f}  "
                  f"({metrics['seconds']:.1f}s)")
    return 0
