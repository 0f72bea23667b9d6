"""``biformer train``: the reference recipe on one CPU, one GPU or many machines (torchrun).

Without ``--data`` it trains the small demo BiFormer (:data:`recipe.DEMO`) on the embedded
digits; with ``--data DIR`` (ImageFolder ``train/`` and ``val/``) or ``--dataset NAME`` (any
timm dataset) it follows BiFormer's ImageNet recipe (:data:`recipe.REFERENCE`). Built from timm's
components: ``create_transform``, ``Mixup``, ``create_optimizer_v2``, ``create_scheduler_v2``,
``LabelSmoothingCrossEntropy`` / ``SoftTargetCrossEntropy``, ``ModelEmaV3``, ``NativeScaler``,
``dispatch_clip_grad``, ``accuracy``, ``distribute_bn``.

Progress is never lost: ``last.pth`` is replaced atomically after every epoch and when SIGTERM
or SIGINT arrives (after the current step); ``--out DIR`` resumes from ``DIR/last.pth``, part-way
through an epoch included, and the resumed run ends with the same weights as an uninterrupted one
(deterministic mode, the default on CPU).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import math
import os
import signal
import sys
import time
import warnings
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..errors import CommandError
from . import recipe as recipes
from .checkpointing import (
    CHECKPOINT_FORMAT,
    atomic_save,
    capture_rng,
    load_checkpoint_file,
    restore_rng,
)
from .data import (
    DIGITS,
    SeededSamples,
    ShardSampler,
    UnreadableImagesError,
    class_names_of,
    create_image_dataset,
    digits_dataset,
    make_loader,
    train_sampler,
)
from .distributed import DistEnv, init_distributed, shutdown_distributed
from .evaluate import amp_dtype_for, eval_transform, evaluate
from .logging import RunLog, format_duration, progress_bar
from .modeling import build_model, load_weights, parse_model_kwargs, unwrap

__all__ = ["TrainResult", "add_arguments", "main", "train"]

LAST, BEST = "last.pth", "best.pth"
EXIT_SIGNAL = {signal.SIGINT: 130, signal.SIGTERM: 143}

# Recipe fields settable from the command line: flag dest -> Recipe field.
_RECIPE_FLAGS = {
    "model": "model", "img_size": "img_size", "epochs": "epochs", "batch_size": "batch_size",
    "lr": "lr", "lr_base": "lr_base", "lr_base_size": "lr_base_size", "opt": "opt",
    "opt_eps": "opt_eps", "momentum": "momentum", "weight_decay": "weight_decay",
    "sched": "sched", "warmup_epochs": "warmup_epochs", "warmup_lr": "warmup_lr",
    "min_lr": "min_lr", "smoothing": "smoothing", "mixup": "mixup", "cutmix": "cutmix",
    "mixup_prob": "mixup_prob", "mixup_switch_prob": "mixup_switch_prob",
    "mixup_mode": "mixup_mode", "aa": "aa", "color_jitter": "color_jitter", "reprob": "reprob",
    "remode": "remode", "recount": "recount", "hflip": "hflip", "scale": "scale",
    "ratio": "ratio", "train_interpolation": "train_interpolation", "crop_pct": "crop_pct",
    "repeated_aug": "repeated_aug", "drop_path": "drop_path", "clip_grad": "clip_grad",
    "clip_mode": "clip_mode", "model_ema": "model_ema", "model_ema_decay": "model_ema_decay",
    "workers": "num_workers", "seed": "seed",
}


# ------------------------------------------------------------------------------------------
# Command line


def add_arguments(parser: argparse.ArgumentParser) -> None:
    bool_flag = argparse.BooleanOptionalAction
    g = parser.add_argument_group("data")
    g.add_argument("--data", metavar="DIR", default=None,
                   help="dataset root: DIR/train/<class>/<image> and DIR/val/<class>/<image> "
                   "(default: the embedded digits demo)")
    g.add_argument("--dataset", metavar="NAME", default=None,
                   help="a timm dataset name (torch/cifar10, hfds/..., ...); default: image folder")
    g.add_argument("--train-split", default="train", help="training split (default train)")
    g.add_argument("--val-split", default="val", help="validation split (default val)")
    g.add_argument("--out", metavar="DIR", default="runs/train",
                   help="output directory: checkpoints, metrics, summary (default runs/train)")
    g.add_argument("--limit-train-batches", type=int, default=None, metavar="N",
                   help="train on the first N batches of each epoch (smoke tests)")
    g.add_argument("--limit-val-batches", type=int, default=None, metavar="N",
                   help="validate on the first N batches (smoke tests)")

    g = parser.add_argument_group("model")
    g.add_argument("--model", metavar="NAME", default=None,
                   help="timm model name (reference recipe: biformer_small; demo: biformer_tiny "
                   "shrunk by --model-kwargs)")
    g.add_argument("--model-kwargs", nargs="*", metavar="KEY=VALUE", default=None,
                   help="model constructor options, e.g. depths=1,1,2,1 n_win=2 auto_pad=True")
    g.add_argument("--num-classes", type=int, default=None, help="default: classes of the data")
    g.add_argument("--img-size", type=int, default=None, help="input size (default: model's)")
    g.add_argument("--crop-pct", type=float, default=None, help="eval crop (default: model's)")
    g.add_argument("--drop-path", type=float, default=None,
                   help="stochastic depth (default: per model, T 0.1 / S 0.15 / B 0.4)")
    g.add_argument("--finetune", metavar="PATH", default=None,
                   help="start from these weights (official or ours); the classifier is "
                   "re-initialised when the number of classes differs")
    g.add_argument("--grad-checkpointing", action="store_true",
                   help="recompute activations in backward (less memory, slower)")
    g.add_argument("--compile", action="store_true", help="torch.compile the model")
    g.add_argument("--sync-bn", action="store_true", help="SyncBatchNorm across GPUs (DDP)")
    g.add_argument("--model-ema", action=bool_flag, default=None,
                   help="keep an exponential moving average of the weights (ModelEmaV3)")
    g.add_argument("--model-ema-decay", type=float, default=None, help="default 0.99996")

    g = parser.add_argument_group("optimisation (defaults: the recipe, see docs/training.md)")
    g.add_argument("--epochs", type=int, default=None)
    g.add_argument("--batch-size", type=int, default=None, help="per process")
    g.add_argument("--lr", type=float, default=None,
                   help="learning rate (default: --lr-base x global batch / --lr-base-size)")
    g.add_argument("--lr-base", type=float, default=None, help="default 5e-4")
    g.add_argument("--lr-base-size", type=int, default=None, help="default 512")
    g.add_argument("--opt", default=None, help="timm optimizer name (default adamw)")
    g.add_argument("--opt-eps", type=float, default=None)
    g.add_argument("--momentum", type=float, default=None)
    g.add_argument("--weight-decay", type=float, default=None, help="default 0.05")
    g.add_argument("--sched", default=None, help="timm scheduler name (default cosine)")
    g.add_argument("--warmup-epochs", type=float, default=None, help="default 5")
    g.add_argument("--warmup-lr", type=float, default=None)
    g.add_argument("--min-lr", type=float, default=None)
    g.add_argument("--clip-grad", type=float, default=None, help="gradient clipping (off)")
    g.add_argument("--clip-mode", default=None, choices=("norm", "value", "agc"))
    g.add_argument("--smoothing", type=float, default=None, help="label smoothing (0.1)")

    g = parser.add_argument_group("augmentation")
    g.add_argument("--aa", default=None, help="auto-augment policy ('none' to disable)")
    g.add_argument("--color-jitter", type=float, default=None)
    g.add_argument("--reprob", type=float, default=None, help="random erasing probability")
    g.add_argument("--remode", default=None)
    g.add_argument("--recount", type=int, default=None)
    g.add_argument("--mixup", type=float, default=None, help="mixup alpha (0.8)")
    g.add_argument("--cutmix", type=float, default=None, help="cutmix alpha (1.0)")
    g.add_argument("--mixup-prob", type=float, default=None)
    g.add_argument("--mixup-switch-prob", type=float, default=None)
    g.add_argument("--mixup-mode", default=None, choices=("batch", "pair", "elem"))
    g.add_argument("--hflip", type=float, default=None)
    g.add_argument("--scale", type=float, nargs=2, default=None, metavar=("MIN", "MAX"))
    g.add_argument("--ratio", type=float, nargs=2, default=None, metavar=("MIN", "MAX"))
    g.add_argument("--train-interpolation", default=None)
    g.add_argument("--repeated-aug", action=bool_flag, default=None,
                   help="repeated augmentation sampler (distributed runs only)")

    g = parser.add_argument_group("run")
    g.add_argument("--device", default=None, help="cuda or cpu (default: cuda if available)")
    g.add_argument("--amp", choices=("auto", "bf16", "fp16", "none"), default="auto",
                   help="mixed precision on CUDA (auto: bf16 where supported); none on CPU")
    g.add_argument("--workers", type=int, default=None, help="loader processes per rank")
    g.add_argument("--threads", type=int, default=None,
                   help="CPU threads per process (default: 1 for the digits demo, whose small "
                   "tensors run fastest on one thread; else PyTorch's default)")
    g.add_argument("--seed", type=int, default=None)
    g.add_argument("--deterministic", action=bool_flag, default=None,
                   help="deterministic algorithms (default: on for CPU, off for CUDA)")
    g.add_argument("--resume", metavar="PATH", default=None,
                   help="resume from this checkpoint (default: OUT/last.pth when it exists)")
    g.add_argument("--no-resume", action="store_true",
                   help="start over even if OUT/last.pth exists")
    g.add_argument("--no-tensorboard", action="store_true", help="do not write TensorBoard logs")


def main(args: argparse.Namespace) -> int:
    return train(args).exit_code


# ------------------------------------------------------------------------------------------
# Run state


@dataclass
class TrainResult:
    """What :func:`train` returns: the exit status, the final (plain) model and the summary."""

    exit_code: int
    model: nn.Module | None = None
    summary: dict[str, Any] = field(default_factory=dict)


@dataclass
class Position:
    """How far training got: ``epoch`` in progress (or next), ``step`` batches done in it."""

    epoch: int = 0
    step: int = 0
    num_updates: int = 0
    loss_sum: float = 0.0
    samples: int = 0
    skipped: int = 0
    seconds: float = 0.0


class StopFlag:
    """SIGTERM/SIGINT handlers that ask the loop to stop after the current step."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}
        self._pid = os.getpid()

    def _handle(self, signum: int, frame: Any) -> None:
        if os.getpid() != self._pid:
            return  # a forked loader worker: the training process decides
        if self.signum is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # second Ctrl-C: stop now, without saving
        self.signum = signum
        print(f"\n{signal.Signals(signum).name}: saving a checkpoint after the current step "
              "(Ctrl-C again to abort without saving)", file=sys.stderr, flush=True)

    def install(self) -> None:
        if not _in_main_thread():
            return
        self._pid = os.getpid()
        for sig in (signal.SIGTERM, signal.SIGINT):
            self._previous[sig] = signal.signal(sig, self._handle)

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()


def _in_main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


def resolve_recipe(args: argparse.Namespace, saved: dict[str, Any] | None) -> recipes.Recipe:
    """The recipe of this run: the saved one (resume) or the demo/reference one, then flags."""
    if saved is not None:
        fields = set(recipes.Recipe.__dataclass_fields__)
        base = recipes.Recipe(**{k: v for k, v in saved.items() if k in fields})
        base = base.replace(scale=tuple(base.scale), ratio=tuple(base.ratio))
    elif args.data is None and args.dataset in (None, DIGITS):
        base = recipes.DEMO
    else:
        base = recipes.REFERENCE
    changes: dict[str, Any] = {}
    for dest, name in _RECIPE_FLAGS.items():
        value = getattr(args, dest, None)
        if value is not None:
            changes[name] = tuple(value) if isinstance(value, list) else value
    if changes.get("aa") in ("none", "None", ""):
        changes["aa"] = None
    if args.model_kwargs is not None:
        changes["model_kwargs"] = {**base.model_kwargs, **parse_model_kwargs(args.model_kwargs)}
        if "model" in changes and changes["model"] != base.model:
            changes["model_kwargs"] = parse_model_kwargs(args.model_kwargs)
    elif "model" in changes and changes["model"] != base.model:
        changes["model_kwargs"] = {}  # the demo's shrinking applies to the demo model only
    r = base.replace(**changes)
    _check_recipe(r)
    return r


def _check_recipe(r: recipes.Recipe) -> None:
    positive = {"epochs": r.epochs, "batch_size": r.batch_size, "lr_base_size": r.lr_base_size}
    for name, value in positive.items():
        if value < 1:
            raise CommandError(f"--{name.replace('_', '-')} must be >= 1, got {value}")
    if r.lr is not None and r.lr <= 0:
        raise CommandError(f"--lr must be > 0, got {r.lr}")
    if r.num_workers < 0:
        raise CommandError(f"--workers must be >= 0, got {r.num_workers}")
    if (r.mixup > 0 or r.cutmix > 0) and r.batch_size % 2:
        raise CommandError(f"mixup/cutmix need an even --batch-size, got {r.batch_size}")
    if r.drop_path is not None and not 0 <= r.drop_path < 1:
        raise CommandError(f"--drop-path must be in [0, 1), got {r.drop_path}")


# ------------------------------------------------------------------------------------------
# Training


def train(args: argparse.Namespace) -> TrainResult:
    """Run ``biformer train`` with parsed ``args``; see the module docstring."""
    env = init_distributed(device=args.device)
    previous = torch.are_deterministic_algorithms_enabled(), torch.get_num_threads()
    stop = StopFlag()
    try:
        with warnings.catch_warnings():
            # DDP compares the strides of size-1 dims of depthwise-conv weight grads: harmless
            warnings.filterwarnings("ignore", message="Grad strides do not match bucket view")
            return _Trainer(args, env, stop).run()
    finally:
        stop.restore()
        torch.use_deterministic_algorithms(previous[0])
        torch.set_num_threads(previous[1])
        shutdown_distributed()


class _Trainer:
    def __init__(self, args: argparse.Namespace, env: DistEnv, stop: StopFlag):
        self.args = args
        self.env = env
        self.stop = stop

    def say(self, text: str) -> None:
        if self.env.is_main:
            print(text, flush=True)

    # ---- setup -------------------------------------------------------------------------------

    def _resume_path(self) -> str | None:
        a = self.args
        if a.resume and a.no_resume:
            raise CommandError("--resume and --no-resume contradict each other; pick one")
        if a.resume:
            if not os.path.isfile(a.resume):
                raise CommandError(f"--resume {a.resume}: no such file")
            return a.resume
        auto = os.path.join(a.out, LAST)
        if not a.no_resume and os.path.isfile(auto):
            return auto
        return None

    def _load_resume(self, path: str) -> dict[str, Any]:
        ckpt = load_checkpoint_file(path, flag="--resume")
        if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
            raise CommandError(
                f"--resume {path} is not a training checkpoint of biformer train (use --finetune "
                "to start from other weights)"
            )
        return ckpt

    def _datasets(self, r: recipes.Recipe, data: str | None, dataset: str) -> None:
        if dataset == DIGITS:
            self.train_ds = digits_dataset("train")
            self.val_ds = digits_dataset("val")
        else:
            if data is None:
                raise CommandError(f"--dataset {dataset or 'folder'} needs --data DIR")
            self.train_ds = create_image_dataset(
                dataset, data, self.args.train_split, transform=None, is_training=True
            )
            names = class_names_of(self.train_ds)
            class_map = {n: i for i, n in enumerate(names)} if names and not dataset else None
            self.val_ds = create_image_dataset(
                dataset, data, self.args.val_split, transform=None, is_training=False,
                class_map=class_map,
            )
            if len(self.val_ds) == 0:
                raise CommandError(f"--data {data}: the {self.args.val_split} split is empty")
        self.class_names = class_names_of(self.train_ds)

    def _transforms(self, r: recipes.Recipe, model: nn.Module) -> dict[str, Any]:
        from timm.data import create_transform, resolve_data_config

        cfg = dict(resolve_data_config({}, model=model))
        if r.img_size is not None:
            cfg["input_size"] = (cfg["input_size"][0], r.img_size, r.img_size)
        if r.crop_pct is not None:
            cfg["crop_pct"] = r.crop_pct
        data_config = {k: (list(v) if isinstance(v, tuple) else v) for k, v in cfg.items()}
        train_tf = create_transform(
            input_size=tuple(data_config["input_size"]),
            is_training=True,
            scale=tuple(r.scale),
            ratio=tuple(r.ratio),
            hflip=r.hflip,
            color_jitter=r.color_jitter,
            auto_augment=r.aa,
            interpolation=r.train_interpolation,
            mean=tuple(data_config["mean"]),
            std=tuple(data_config["std"]),
            re_prob=r.reprob,
            re_mode=r.remode,
            re_count=r.recount,
        )
        _set_transform(self.train_ds, train_tf)
        _set_transform(self.val_ds, eval_transform(data_config))
        return data_config

    def run(self) -> TrainResult:
        a, env = self.args, self.env
        wall_start = time.perf_counter()
        resume_path = self._resume_path()
        ckpt = self._load_resume(resume_path) if resume_path else None
        saved_args = (ckpt or {}).get("args") or {}
        r = resolve_recipe(a, saved_args.get("recipe") if ckpt else None)
        if ckpt and a.model and a.model != ckpt.get("model_name"):
            raise CommandError(
                f"{resume_path} was trained as {ckpt.get('model_name')}, not {a.model}; pass "
                "--no-resume to start over, or another --out"
            )
        data = a.data if a.data is not None else saved_args.get("data")
        dataset = a.dataset if a.dataset is not None else saved_args.get("dataset")
        if dataset is None:
            dataset = DIGITS if data is None else ""

        threads = a.threads
        if threads is None and dataset == DIGITS and env.device.type == "cpu":
            threads = recipes.DEMO_THREADS
        if threads is not None:
            if threads < 1:
                raise CommandError(f"--threads must be >= 1, got {threads}")
            torch.set_num_threads(threads)

        deterministic = a.deterministic if a.deterministic is not None else (
            env.device.type == "cpu"
        )
        if deterministic:
            if env.device.type == "cuda":
                os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
                torch.backends.cudnn.benchmark = False
            torch.use_deterministic_algorithms(True)
        elif env.device.type == "cuda":
            torch.backends.cudnn.benchmark = True
        _seed_everything(r.seed + env.rank)

        self._datasets(r, data, dataset)
        num_classes = a.num_classes or (ckpt or {}).get("num_classes") or len(
            self.class_names or []
        )
        if not num_classes:
            raise CommandError("cannot tell the number of classes of the data; pass --num-classes")
        if self.class_names and len(self.class_names) != num_classes:
            self.class_names = None

        net = build_model(r.model, num_classes=num_classes, model_kwargs=r.model_kwargs,
                          drop_path_rate=recipes.drop_path_for(r))
        if a.finetune and not ckpt:
            fresh = load_weights(net, a.finetune, new_head=True, flag="--finetune")
            self.say(f"fine-tuning from {a.finetune}"
                     + (f" (new {num_classes}-class classifier)" if fresh else ""))
        data_config = self._transforms(r, net)
        amp_dtype = amp_dtype_for(a.amp, env.device)

        if a.sync_bn and env.distributed:
            if env.device.type != "cuda":
                raise CommandError("--sync-bn needs CUDA devices (SyncBatchNorm does not run on "
                                   "the CPU); drop --sync-bn")
            net = nn.SyncBatchNorm.convert_sync_batchnorm(net)
        if a.grad_checkpointing:
            if not hasattr(net, "set_grad_checkpointing"):
                raise CommandError(f"{r.model} does not support --grad-checkpointing")
            net.set_grad_checkpointing(True)
        net.to(env.device)

        from timm.utils import ModelEmaV3, NativeScaler

        world_batch = r.batch_size * env.world_size
        lr = r.lr if r.lr is not None else r.lr_base * world_batch / r.lr_base_size
        optimizer = _optimizer(r, net, lr)
        scaler = NativeScaler(device=env.device.type) if amp_dtype == torch.float16 else None
        ema = ModelEmaV3(net, decay=r.model_ema_decay) if r.model_ema else None

        model: nn.Module = torch.compile(net) if a.compile else net
        eval_model = model
        if env.distributed:
            model = nn.parallel.DistributedDataParallel(
                model, device_ids=[env.device.index] if env.device.type == "cuda" else None
            )

        # ---- loaders ----
        seeded = SeededSamples(self.train_ds, seed=r.seed)
        sampler = train_sampler(seeded, rank=env.rank, world_size=env.world_size, seed=r.seed,
                                repeated_aug=r.repeated_aug)
        pin = env.device.type == "cuda"
        train_loader = make_loader(seeded, batch_size=r.batch_size, sampler=sampler,
                                   num_workers=r.num_workers, drop_last=True, pin_memory=pin)
        steps = len(train_loader)
        if a.limit_train_batches is not None:
            steps = min(steps, max(a.limit_train_batches, 1))
        if steps < 1:
            raise CommandError(
                f"--batch-size {r.batch_size} is larger than the {len(sampler)} training images "
                "of each process; lower --batch-size"
            )
        val_loader = make_loader(
            self.val_ds, batch_size=r.batch_size,
            sampler=ShardSampler(len(self.val_ds), rank=env.rank, world_size=env.world_size),
            num_workers=r.num_workers, drop_last=False, pin_memory=pin,
        )

        scheduler = _scheduler(r, optimizer, steps)
        mixup_fn, criterion = _mixup_and_loss(r, num_classes)

        # ---- resume ----
        pos = Position()
        history: list[dict[str, Any]] = []
        best: dict[str, Any] = {"val_top1": None, "epoch": None, "weights": None}
        trained_seconds = 0.0
        if ckpt is not None:
            if ckpt.get("num_classes") != num_classes:
                raise CommandError(
                    f"{resume_path} has {ckpt.get('num_classes')} classes, the data "
                    f"{num_classes}; pass --no-resume to start over"
                )
            try:
                self._restore(ckpt, net=net, optimizer=optimizer, scheduler=scheduler,
                              scaler=scaler, ema=ema)
            except (RuntimeError, ValueError, KeyError) as err:
                lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
                detail = next((ln for ln in lines if not ln.endswith(":")), type(err).__name__)
                raise CommandError(
                    f"cannot resume from {resume_path}: its state does not fit this run (were "
                    f"--model-kwargs or --opt changed?): {detail[:240]}; pass --no-resume to "
                    "start over"
                ) from None
            pos = Position(**ckpt["position"])
            history = list(ckpt.get("history") or [])
            best = dict(ckpt.get("best") or best)
            trained_seconds = float(ckpt.get("wall_time_s") or 0.0)
            where = (f"epoch {pos.epoch + 1}, step {pos.step}" if pos.step
                     else f"the end of epoch {pos.epoch}")
            self.say(f"resuming from {resume_path} ({where})")
            rngs = ckpt.get("rng") or []
            if len(rngs) == env.world_size:
                restore_rng(rngs[env.rank])  # last: nothing may draw random numbers after it
            else:
                self.say(f"warning: the checkpoint holds the random state of {len(rngs)} "
                         f"process(es), this run has {env.world_size}; reseeding")
                _seed_everything(r.seed + env.rank + 1000 * pos.num_updates)

        log = RunLog(a.out, enabled=env.is_main, tensorboard=not a.no_tensorboard,
                     purge_step=pos.num_updates if ckpt else None)
        run_args = {
            "recipe": r.as_dict(), "data": data, "dataset": dataset,
            "train_split": a.train_split, "val_split": a.val_split, "out": a.out,
            "world_size": env.world_size, "device": env.device.type,
            "amp": str(amp_dtype).replace("torch.", "") if amp_dtype else "none",
            "deterministic": deterministic, "compile": bool(a.compile),
            "grad_checkpointing": bool(a.grad_checkpointing), "sync_bn": bool(a.sync_bn),
            "finetune": a.finetune, "lr": lr, "global_batch": world_batch,
            "limit_train_batches": a.limit_train_batches,
            "limit_val_batches": a.limit_val_batches,
        }
        describe = {
            "format": CHECKPOINT_FORMAT, "model_name": r.model,
            "model_kwargs": dict(r.model_kwargs), "num_classes": num_classes,
            "class_names": self.class_names, "data_config": data_config, "dataset": dataset,
        }
        n_params = sum(p.numel() for p in net.parameters())
        self.say(
            f"{r.model} ({n_params / 1e6:.2f} M parameters), {num_classes} classes, "
            f"{len(self.train_ds)} training / {len(self.val_ds)} validation images"
            f"{' (embedded digits)' if dataset == DIGITS else ''}; {env.world_size} process(es) "
            f"on {env.device.type}, batch {r.batch_size}x{env.world_size}, lr {lr:.3g}, "
            f"{r.epochs} epochs; writing {a.out}"
        )

        def state(position: Position) -> dict[str, Any]:
            rngs = env.gather_objects(capture_rng())
            return {
                **describe,
                "model": net.state_dict(),
                "ema": ema.module.state_dict() if ema is not None else None,
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict() if scheduler is not None else None,
                "scaler": scaler.state_dict() if scaler is not None else None,
                "position": vars(position).copy(),
                "rng": rngs,
                "history": history,
                "best": best,
                "args": run_args,
                "wall_time_s": trained_seconds + time.perf_counter() - wall_start,
            }

        def summary(finished: bool) -> dict[str, Any]:
            last = history[-1] if history else {}
            return {
                "model": r.model, "model_kwargs": dict(r.model_kwargs),
                "dataset": dataset, "data": data, "num_classes": num_classes,
                "epochs": r.epochs, "epochs_done": len(history), "finished": finished,
                "final_val_top1": last.get("val_top1"), "final_val_top5": last.get("val_top5"),
                "final_val_loss": last.get("val_loss"),
                "final_ema_val_top1": last.get("ema_val_top1"),
                "best_val_top1": best.get("val_top1"), "best_epoch": best.get("epoch"),
                "best_weights": best.get("weights"),
                "wall_time_s": round(trained_seconds + time.perf_counter() - wall_start, 2),
                "world_size": env.world_size, "args": run_args,
            }

        # ---- loop ----
        self.stop.install()
        exit_code = 0
        try:
            if pos.epoch >= r.epochs:
                self.say(f"{a.out} already holds {pos.epoch} finished epochs of {r.epochs}; "
                         "nothing to do (pass a larger --epochs, or --no-resume to start over)")
            while pos.epoch < r.epochs:
                epoch = pos.epoch
                seeded.set_epoch(epoch)
                sampler.set_epoch(epoch, skip=pos.step * r.batch_size)
                if pos.step == 0:
                    pos.loss_sum, pos.samples, pos.skipped, pos.seconds = 0.0, 0, 0, 0.0
                interrupted = self._train_epoch(
                    model, net, train_loader, steps, pos, optimizer=optimizer,
                    scheduler=scheduler, scaler=scaler, ema=ema, mixup_fn=mixup_fn,
                    criterion=criterion, amp_dtype=amp_dtype, r=r, log=log,
                )
                if interrupted:
                    if env.is_main:
                        atomic_save(state(pos), os.path.join(a.out, LAST))
                    else:
                        state(pos)  # the RNG gather is collective
                    log.write_summary(summary(False))
                    self.say(f"interrupted at epoch {epoch + 1} step {pos.step}/{steps}; saved "
                             f"{os.path.join(a.out, LAST)}: run the same command to resume")
                    exit_code = EXIT_SIGNAL.get(self.stop.signum or signal.SIGTERM, 143)
                    break
                exit_code = self._end_epoch(
                    epoch, steps, pos, r, net=net, eval_model=eval_model, ema=ema,
                    val_loader=val_loader, amp_dtype=amp_dtype, optimizer=optimizer,
                    history=history, best=best, log=log, state=state, summary=summary,
                    describe=describe, run_args=run_args, wall_start=wall_start,
                    trained_seconds=trained_seconds,
                )
                if exit_code:
                    break
        finally:
            self.stop.restore()
            log.close()

        digests = env.gather_objects(weights_digest(net))
        final = summary(exit_code == 0 and pos.epoch >= r.epochs)
        final["weights_sha256"] = digests
        if env.is_main:
            log.write_summary(final)
            if len(set(digests)) > 1:
                print(f"warning: the ranks ended with different weights: {digests}",
                      file=sys.stderr)
            if exit_code == 0:
                total = final["wall_time_s"]
                top1, best_top1 = final["final_val_top1"], final["best_val_top1"]
                self.say(
                    f"done: {len(history)} epochs in {format_duration(total)}; val top-1 "
                    + (f"{top1:.2f}% (best {best_top1:.2f}% at epoch {final['best_epoch']})"
                       if top1 is not None else "n/a")
                    + f"; {a.out}: summary.json, metrics.csv, {LAST}, {BEST}"
                    + (", tb/" if log.writer is not None or os.path.isdir(
                        os.path.join(a.out, "tb")) else "")
                )
        return TrainResult(exit_code=exit_code, model=net, summary=final)

    @staticmethod
    def _restore(ckpt: dict[str, Any], *, net, optimizer, scheduler, scaler, ema) -> None:
        """Load the training state of ``ckpt`` (weights, optimizer, schedule, scaler, EMA)."""
        net.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        if scheduler is not None and ckpt.get("scheduler") is not None:
            scheduler.load_state_dict(ckpt["scheduler"])
        if scaler is not None and ckpt.get("scaler") is not None:
            scaler.load_state_dict(ckpt["scaler"])
        if ema is not None:
            if ckpt.get("ema") is not None:
                ema.module.load_state_dict(ckpt["ema"])
            else:  # EMA switched on at resume: start it from the current weights
                ema.set(net)

    # ---- one epoch ---------------------------------------------------------------------------

    def _train_epoch(self, model, net, loader, steps, pos, *, optimizer, scheduler, scaler, ema,
                     mixup_fn, criterion, amp_dtype, r, log) -> bool:
        """Train from ``pos.step`` to ``steps``; True when a signal stopped it part-way."""
        from timm.utils import dispatch_clip_grad

        env = self.env
        model.train()
        autocast = (torch.autocast(env.device.type, dtype=amp_dtype) if amp_dtype is not None
                    else contextlib.nullcontext())
        bar = progress_bar(steps, desc=f"epoch {pos.epoch + 1}/{r.epochs}", enabled=env.is_main,
                           initial=pos.step)
        loss_acc = torch.zeros((), dtype=torch.float64, device=env.device)
        samples_start, tick = pos.samples, time.perf_counter()
        interrupted = False
        it = iter(loader)
        try:
            while pos.step < steps:
                try:
                    batch = next(it)
                except StopIteration:
                    break
                except UnreadableImagesError as err:
                    raise CommandError(str(err).strip().splitlines()[-1]) from None
                except RuntimeError:
                    if self.stop.signum is not None:  # a loader worker died of the same signal
                        interrupted = True
                        break
                    raise
                images = batch.images.to(env.device, non_blocking=True)  # B, C, H, W
                targets = batch.targets.to(env.device, non_blocking=True)  # B
                pos.skipped += len(batch.skipped)
                if batch.skipped and env.is_main:
                    for item in batch.skipped:
                        print(f"warning: unreadable image skipped: {item}", file=sys.stderr)
                if mixup_fn is not None:
                    images, targets = mixup_fn(images, targets)
                try:
                    with autocast:
                        logits = model(images)
                        loss = criterion(logits, targets)
                except ValueError as err:  # the model rejects the input (size vs n_win, ...)
                    raise CommandError(
                        f"{r.model} cannot take {tuple(images.shape)} inputs: "
                        f"{str(err).splitlines()[0]}"
                    ) from None
                optimizer.zero_grad(set_to_none=True)
                if scaler is not None:
                    scaler(loss, optimizer, clip_grad=r.clip_grad, clip_mode=r.clip_mode,
                           parameters=net.parameters())
                else:
                    loss.backward()
                    if r.clip_grad is not None:
                        dispatch_clip_grad(net.parameters(), r.clip_grad, mode=r.clip_mode)
                    optimizer.step()
                pos.num_updates += 1
                pos.step += 1
                if scheduler is not None:
                    scheduler.step_update(num_updates=pos.num_updates)
                if ema is not None:
                    ema.update(net, step=pos.num_updates)
                n = images.shape[0]
                loss_acc += loss.detach().double() * n
                pos.samples += n
                bar.update(1)
                # Every 10 steps (every step alone): progress, a finite loss, signals. Ranks
                # check at the same steps, so that they stop together.
                report = pos.step % 10 == 0 or pos.step == steps
                nonfinite = False
                if report:
                    lr = optimizer.param_groups[0]["lr"]
                    rate = (pos.samples - samples_start) * env.world_size / max(
                        time.perf_counter() - tick, 1e-9)
                    loss_now = float(loss.item())
                    nonfinite = not math.isfinite(loss_now)
                    bar.set_postfix_str(f"loss {loss_now:.3f}  lr {lr:.2e}  {rate:.0f} img/s")
                    log.scalars({"train/loss": loss_now, "train/lr": lr}, pos.num_updates)
                if report or not env.distributed:
                    signalled, diverged = env.all_reduce_sum(
                        [float(self.stop.signum is not None), float(nonfinite)]
                    )
                    if diverged:
                        raise CommandError(
                            f"the training loss is not finite at epoch {pos.epoch + 1} step "
                            f"{pos.step}; lower --lr or set --clip-grad ({LAST} holds the last "
                            "finished epoch)"
                        )
                    if signalled:
                        if self.stop.signum is None:  # another rank was signalled
                            self.stop.signum = signal.SIGTERM
                        interrupted = pos.step < steps
                        break
        finally:
            bar.close()
            del it
            pos.loss_sum += float(loss_acc.item())
            pos.seconds += time.perf_counter() - tick
        return interrupted

    def _end_epoch(self, epoch, steps, pos, r, *, net, eval_model, ema, val_loader, amp_dtype,
                   optimizer, history, best, log, state, summary, describe, run_args,
                   wall_start, trained_seconds) -> int:
        """Validate, record, checkpoint; returns a non-zero exit status when signalled."""
        from timm.utils import distribute_bn

        env, a = self.env, self.args
        if env.distributed:  # every rank keeps the same BatchNorm statistics (their mean)
            distribute_bn(net, env.world_size, reduce=True)
            if ema is not None:
                distribute_bn(ema.module, env.world_size, reduce=True)
        loss_sum, samples, skipped = env.all_reduce_sum(
            [pos.loss_sum, float(pos.samples), float(pos.skipped)]
        )
        val = evaluate(eval_model, val_loader, env=env, amp_dtype=amp_dtype,
                       limit_batches=a.limit_val_batches, progress=True, desc="validate")
        row: dict[str, Any] = {
            "epoch": epoch + 1,
            "train_loss": loss_sum / max(samples, 1),
            "val_loss": val["loss"], "val_top1": val["top1"], "val_top5": val["top5"],
        }
        candidates = [("model", val["top1"])]
        if ema is not None:
            ema_val = evaluate(ema.module, val_loader, env=env, amp_dtype=amp_dtype,
                               limit_batches=a.limit_val_batches)
            row.update(ema_val_loss=ema_val["loss"], ema_val_top1=ema_val["top1"],
                       ema_val_top5=ema_val["top5"])
            candidates.append(("ema", ema_val["top1"]))
        row.update(
            lr=optimizer.param_groups[0]["lr"],
            epoch_time_s=pos.seconds,
            img_per_s=samples / max(pos.seconds, 1e-9) if pos.seconds else None,
            skipped_images=int(skipped + val["skipped"]),
        )
        history.append(row)
        which, top1 = max(candidates, key=lambda c: c[1])
        improved = best.get("val_top1") is None or top1 > best["val_top1"]
        if improved:
            best.update(val_top1=top1, epoch=epoch + 1, weights=which)
        pos.epoch, pos.step = epoch + 1, 0

        checkpoint = state(pos)  # collective (RNG of every rank)
        if env.is_main:
            atomic_save(checkpoint, os.path.join(a.out, LAST))
            if improved:
                weights = ema.module.state_dict() if which == "ema" else net.state_dict()
                atomic_save({**describe, "model": weights, "epoch": epoch + 1,
                             "metrics": row, "weights": which, "args": run_args},
                            os.path.join(a.out, BEST))
            log.write_history(history)
            log.scalars({
                "train/epoch_loss": row["train_loss"], "val/loss": row["val_loss"],
                "val/top1": row["val_top1"], "val/top5": row["val_top5"],
                "ema_val/top1": row.get("ema_val_top1"),
            }, pos.num_updates)
            log.write_summary(summary(False))
        del checkpoint

        elapsed = trained_seconds + time.perf_counter() - wall_start
        done = len(history)
        remaining = (elapsed / max(done, 1)) * (r.epochs - pos.epoch)
        ema_txt = f"  ema top-1 {row['ema_val_top1']:.2f}" if ema is not None else ""
        skip_txt = f"  skipped {row['skipped_images']} unreadable" if row["skipped_images"] else ""
        rate = row["img_per_s"] or 0.0
        self.say(
            f"epoch {epoch + 1}/{r.epochs}  train loss {row['train_loss']:.4f}  "
            f"val loss {row['val_loss']:.4f}  top-1 {row['val_top1']:.2f}  "
            f"top-5 {row['val_top5']:.2f}{ema_txt}  lr {row['lr']:.2e}  {rate:.0f} img/s  "
            f"{format_duration(pos.seconds)}  eta {format_duration(remaining)}{skip_txt}"
        )
        if env.any(self.stop.signum is not None) and pos.epoch < r.epochs:
            self.say(f"stopped after epoch {pos.epoch}; {os.path.join(a.out, LAST)} is saved: "
                     "run the same command to resume")
            return EXIT_SIGNAL.get(self.stop.signum or signal.SIGTERM, 143)
        return 0


# ------------------------------------------------------------------------------------------
# Helpers


def _optimizer(r: recipes.Recipe, net: nn.Module, lr: float) -> torch.optim.Optimizer:
    """timm's optimizer factory; no weight decay on norms, biases and ``no_weight_decay()``."""
    from timm.optim import create_optimizer_v2

    kwargs: dict[str, Any] = {}
    name = r.opt.lower()
    if any(k in name for k in ("adam", "lamb", "adan", "lion", "rmsprop")):
        kwargs["eps"] = r.opt_eps
    if name in ("sgd", "momentum", "nesterov", "rmsprop"):
        kwargs["momentum"] = r.momentum
    try:
        return create_optimizer_v2(net, opt=r.opt, lr=lr, weight_decay=r.weight_decay, **kwargs)
    except (AssertionError, ValueError, TypeError) as err:
        raise CommandError(f"--opt {r.opt}: {str(err).splitlines()[0]}") from None


def _scheduler(r: recipes.Recipe, optimizer: torch.optim.Optimizer, steps: int) -> Any:
    """timm's scheduler factory, stepped after every update (``step_update``)."""
    from timm.scheduler import create_scheduler_v2

    try:
        scheduler, _ = create_scheduler_v2(
            optimizer, sched=r.sched, num_epochs=r.epochs, warmup_epochs=r.warmup_epochs,
            warmup_lr=r.warmup_lr, min_lr=r.min_lr, step_on_epochs=False,
            updates_per_epoch=steps,
        )
    except (AssertionError, ValueError, TypeError) as err:
        raise CommandError(f"--sched {r.sched}: {str(err).splitlines()[0]}") from None
    return scheduler


def _mixup_and_loss(r: recipes.Recipe, num_classes: int) -> tuple[Any, nn.Module]:
    """timm's Mixup (or None) and the matching training loss."""
    from timm.data import Mixup
    from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy

    if r.mixup > 0 or r.cutmix > 0:
        mixup = Mixup(mixup_alpha=r.mixup, cutmix_alpha=r.cutmix, prob=r.mixup_prob,
                      switch_prob=r.mixup_switch_prob, mode=r.mixup_mode,
                      label_smoothing=r.smoothing, num_classes=num_classes)
        return mixup, SoftTargetCrossEntropy()  # mixup smooths the targets itself
    if r.smoothing > 0:
        return None, LabelSmoothingCrossEntropy(smoothing=r.smoothing)
    return None, nn.CrossEntropyLoss()


def _set_transform(dataset: Any, transform: Any) -> None:
    inner = getattr(dataset, "dataset", None)
    if inner is not None and hasattr(inner, "transform"):  # timm datasets behind an adapter
        inner.transform = transform
    else:
        dataset.transform = transform


def _seed_everything(seed: int) -> None:
    import random

    import numpy as np

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def weights_digest(model: nn.Module) -> str:
    """SHA-256 of a model's state (names, dtypes, shapes and values), for comparing copies."""
    h = hashlib.sha256()
    for name, tensor in sorted(unwrap(model).state_dict().items()):
        t = tensor.detach().to("cpu").contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)};".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()
