"""``biformer eval``: top-1 / top-5 accuracy and loss of a model on a validation set.

Loads official checkpoints, ours and timm's through ``biformer.checkpoint.model_from_checkpoint``
and evaluates with the model's own data configuration (resize, crop, interpolation, mean, std;
our checkpoints record theirs). Under torchrun the validation set is split over the ranks and the
counts are summed.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import torch

from ..checkpoint import model_from_checkpoint, parse_model_kwargs
from ..errors import CommandError
from .digits import DIGITS, digits_dataset
from .distributed import init_distributed, shutdown_distributed
from .evaluate import amp_dtype_for, evaluate, model_data_config
from .folders import create_image_dataset, find_split
from .recipe import DEMO_THREADS
from .sampling import ShardSampler, make_loader
from .transforms import create_eval_transform

__all__ = ["add_arguments", "main"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", metavar="PATH", required=True,
                        help="weights: an official BiFormer file, ours or timm's "
                        "(.pth/.pth.tar/.safetensors)")
    parser.add_argument("--model", metavar="NAME", default=None,
                        help="model name (default: the one recorded in our checkpoints)")
    parser.add_argument("--model-kwargs", nargs="*", metavar="KEY=VALUE", default=None,
                        help="model constructor options (default: recorded in our checkpoints)")
    parser.add_argument("--num-classes", type=int, default=None,
                        help="classifier size (default: recorded, else the checkpoint's)")
    parser.add_argument("--data", metavar="DIR", default=None,
                        help="validation images: DIR/<split>/<class>/<image> or "
                        "DIR/<class>/<image> (default for digits checkpoints: the embedded set)")
    parser.add_argument("--dataset", metavar="NAME", default=None,
                        help="timm dataset name (default: image folder)")
    parser.add_argument("--split", default=None,
                        help="split folder inside --data (default: val/ when there is one, "
                        "else DIR itself)")
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


def _check_args(args: argparse.Namespace) -> None:
    minimum = {"batch_size": 1, "workers": 0, "limit_batches": 1, "threads": 1, "img_size": 16}
    for name, low in minimum.items():
        value = getattr(args, name)
        if value is not None and value < low:
            raise CommandError(f"--{name.replace('_', '-')} must be >= {low}, got {value}")


def _dataset(args: argparse.Namespace, record: dict, transform, num_classes: int):
    """The validation set and a word about where it comes from."""
    if args.data is None:
        if record.get("dataset") == DIGITS or args.dataset == DIGITS:
            return digits_dataset("val", transform=transform), "embedded digits (val)"
        raise CommandError("--data DIR is needed: the validation images to evaluate on")
    split = args.split
    if split is None and not args.dataset:
        split = "val" if find_split(args.data, "val") else None
    names = record.get("class_names")
    class_map = {n: i for i, n in enumerate(names)} if names else None
    dataset = create_image_dataset(args.dataset or "", args.data, split, is_training=False,
                                   class_map=class_map)
    dataset.transform = transform
    found = getattr(dataset, "classes", None)
    if found and not names and len(found) != num_classes:
        raise CommandError(f"--data {args.data} has {len(found)} class folders but the model "
                           f"has {num_classes} classes; evaluate on one folder per class of the "
                           "model")
    return dataset, os.path.join(args.data, split) if split else args.data


def main(args: argparse.Namespace) -> int:
    _check_args(args)
    env = init_distributed(device=args.device)
    threads = torch.get_num_threads()
    try:
        model, record = model_from_checkpoint(
            args.checkpoint, model=args.model, num_classes=args.num_classes, use_ema=args.ema,
            model_kwargs=None if args.model_kwargs is None else parse_model_kwargs(
                args.model_kwargs), biformer_only=False)
        wanted = args.threads
        if wanted is None and record.get("dataset") == DIGITS and env.device.type == "cpu":
            wanted = DEMO_THREADS
        if wanted is not None:
            torch.set_num_threads(wanted)
        transform = create_eval_transform(model_data_config(model, record, args.img_size))
        dataset, source = _dataset(args, record, transform, int(model.num_classes))
        model.to(env.device)
        loader = make_loader(dataset, batch_size=args.batch_size,
                             sampler=ShardSampler(len(dataset), rank=env.rank,
                                                  world_size=env.world_size),
                             num_workers=args.workers, drop_last=False,
                             pin_memory=env.device.type == "cuda")
        start = time.perf_counter()
        metrics = evaluate(model, loader, env=env, amp_dtype=amp_dtype_for(args.amp, env.device),
                           limit_batches=args.limit_batches, progress=True)
        metrics["seconds"] = time.perf_counter() - start
        if env.is_main:
            _print(args, source, metrics)
        return 0
    finally:
        torch.set_num_threads(threads)
        shutdown_distributed()


def _print(args: argparse.Namespace, source: str, metrics: dict) -> None:
    if metrics["skipped"]:
        print(f"warning: {metrics['skipped']} unreadable image(s) skipped", file=sys.stderr)
    if args.json:
        print(json.dumps({"checkpoint": os.path.abspath(args.checkpoint), "data": source,
                          **metrics}))
    else:
        print(f"{source}: {metrics['count']} images  top-1 {metrics['top1']:.3f}  "
              f"top-5 {metrics['top5']:.3f}  loss {metrics['loss']:.4f}  "
              f"({metrics['seconds']:.1f}s)")
