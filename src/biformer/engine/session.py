"""Setting up a training run: everything built from the recipe, ready for the epoch loop.

``open_session`` resolves the recipe and data options (refusing flags a resumed checkpoint
contradicts), takes the output folder, sets the process up (threads, determinism, seeds), and
builds the data, model, optimiser, loaders, schedule and run state, restoring a checkpoint when
it resumes. The result, a ``Session``, is what ``biformer.engine.trainer`` runs.
"""

from __future__ import annotations

import argparse
import os
import time
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..checkpoint import TRAIN_STATE_FORMAT, is_train_state, read_file
from ..errors import CommandError
from .builders import (
    Data,
    build_data,
    build_model,
    build_optimizer,
    build_scheduler,
    data_config_for,
    mixup_and_loss,
    set_transforms,
)
from .config import RunOptions, refuse_changed_flags, resolve_options, resolve_recipe
from .digits import DIGITS
from .distributed import DistEnv
from .epoch import EpochLoop
from .evaluate import amp_dtype_for
from .logging import RunLog
from .recipe import DEMO_THREADS, Recipe
from .rng import restore_rng, seed_everything
from .run_folder import LAST, RunFolder
from .run_state import RunState
from .sampling import SeededSamples, ShardSampler, make_loader, train_sampler
from .signals import StopFlag

__all__ = ["Session", "open_session"]


@dataclass
class Session:
    """A run ready to train: its settings, data, state and the loop's parts."""

    args: argparse.Namespace
    env: DistEnv
    recipe: Recipe
    options: RunOptions
    folder: RunFolder
    data: Data
    num_classes: int
    state: RunState
    loop: EpochLoop
    seeded: SeededSamples
    sampler: Any
    train_loader: Any
    val_loader: Any
    steps: int
    eval_model: nn.Module
    record: dict[str, Any]  # what best.pth and last.pth say about the model
    run_args: dict[str, Any]  # what the checkpoints record about the run
    resumed_from: str | None = None
    wall_start: float = field(default_factory=time.perf_counter)
    trained_seconds: float = 0.0

    def say(self, text: str) -> None:
        if self.env.is_main:
            print(text, flush=True)

    def elapsed(self) -> float:
        return self.trained_seconds + time.perf_counter() - self.wall_start


def _resume_path(args: argparse.Namespace) -> str | None:
    if args.resume and args.no_resume:
        raise CommandError("--resume and --no-resume contradict each other; pick one")
    if args.resume:
        if not os.path.isfile(args.resume):
            raise CommandError(f"--resume {args.resume}: no such file")
        return args.resume
    auto = os.path.join(args.out, LAST)
    return auto if not args.no_resume and os.path.isfile(auto) else None


def _read_resume(path: str) -> dict[str, Any]:
    ckpt = read_file(path)
    if not is_train_state(ckpt):
        kind = ("it holds weights only (best.pth); resume from last.pth"
                if isinstance(ckpt, dict) and ckpt.get("model_name") else
                "it is not a training checkpoint of biformer train")
        raise CommandError(f"--resume {path}: {kind} (use --finetune to start from weights)")
    return ckpt


def _configure_process(args: argparse.Namespace, env: DistEnv, options: RunOptions,
                       recipe: Recipe) -> bool:
    """Threads, determinism and seeds; returns whether the run is deterministic."""
    threads = args.threads
    if threads is None and options.dataset == DIGITS and env.device.type == "cpu":
        threads = DEMO_THREADS
    if threads is not None:
        if threads < 1:
            raise CommandError(f"--threads must be >= 1, got {threads}")
        torch.set_num_threads(threads)
    deterministic = args.deterministic if args.deterministic is not None else (
        env.device.type == "cpu")
    if deterministic:
        if env.device.type == "cuda":
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
            torch.backends.cudnn.benchmark = False
        torch.use_deterministic_algorithms(True)
    elif env.device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    seed_everything(recipe.seed + env.rank)
    return deterministic


def _num_classes(args: argparse.Namespace, ckpt: dict | None, data: Data) -> int:
    names = data.class_names
    if args.num_classes is not None:
        if args.num_classes < 1:
            raise CommandError(f"--num-classes must be >= 1, got {args.num_classes}")
        if names and args.num_classes != len(names):
            raise CommandError(f"--num-classes {args.num_classes}, but the data has "
                               f"{len(names)} classes; drop --num-classes")
        return args.num_classes
    num = (ckpt or {}).get("num_classes") or len(names or [])
    if not num:
        raise CommandError("cannot tell the number of classes of the data; pass --num-classes")
    return int(num)


def _wrap(args: argparse.Namespace, env: DistEnv, net: nn.Module) -> nn.Module:
    """SyncBN, gradient checkpointing, device, ``torch.compile`` and DDP around ``net``."""
    if args.grad_checkpointing:
        if not hasattr(net, "set_grad_checkpointing"):
            raise CommandError(f"{type(net).__name__} does not support --grad-checkpointing")
        net.set_grad_checkpointing(True)
    net.to(env.device)
    return torch.compile(net) if args.compile else net


def _loaders(recipe: Recipe, options: RunOptions, env: DistEnv, data: Data):
    seeded = SeededSamples(data.train, seed=recipe.seed)
    sampler = train_sampler(seeded, rank=env.rank, world_size=env.world_size, seed=recipe.seed,
                            repeated_aug=recipe.repeated_aug)
    pin = env.device.type == "cuda"
    train_loader = make_loader(seeded, batch_size=recipe.batch_size, sampler=sampler,
                               num_workers=recipe.num_workers, drop_last=True, pin_memory=pin)
    steps = len(train_loader)
    if options.limit_train_batches is not None:
        steps = min(steps, options.limit_train_batches)
    if steps < 1:
        raise CommandError(f"--batch-size {recipe.batch_size} is larger than the {len(sampler)} "
                           "training images of each process; lower --batch-size")
    val_loader = make_loader(
        data.val, batch_size=recipe.batch_size,
        sampler=ShardSampler(len(data.val), rank=env.rank, world_size=env.world_size),
        num_workers=recipe.num_workers, drop_last=False, pin_memory=pin)
    return seeded, sampler, train_loader, val_loader, steps


def _run_args(args, env, recipe, options, amp_dtype, deterministic, lr) -> dict[str, Any]:
    return {
        "recipe": recipe.as_dict(), **options.as_dict(), "out": args.out,
        "world_size": env.world_size, "device": env.device.type,
        "amp": str(amp_dtype).replace("torch.", "") if amp_dtype else "none",
        "deterministic": deterministic, "compile": bool(args.compile),
        "grad_checkpointing": bool(args.grad_checkpointing), "sync_bn": bool(args.sync_bn),
        "finetune": args.finetune, "lr": lr, "global_batch": recipe.batch_size * env.world_size,
    }


def _state(args, env, recipe, net, steps) -> tuple[RunState, nn.Module, float]:
    """The run state (optimiser, scaler, EMA) around ``net`` and the wrapped model."""
    from timm.utils import ModelEmaV3, NativeScaler

    if args.sync_bn and env.distributed:
        if env.device.type != "cuda":
            raise CommandError("--sync-bn needs CUDA devices (SyncBatchNorm does not run on the "
                               "CPU); drop --sync-bn")
        net = nn.SyncBatchNorm.convert_sync_batchnorm(net)
    model = _wrap(args, env, net)
    lr = recipe.lr if recipe.lr is not None else (
        recipe.lr_base * recipe.batch_size * env.world_size / recipe.lr_base_size)
    optimizer = build_optimizer(recipe, net, lr)
    amp_dtype = amp_dtype_for(args.amp, env.device)
    state = RunState(
        net=net, optimizer=optimizer, scheduler=build_scheduler(recipe, optimizer, steps),
        scaler=NativeScaler(device=env.device.type) if amp_dtype == torch.float16 else None,
        ema=ModelEmaV3(net, decay=recipe.model_ema_decay) if recipe.model_ema else None,
    )
    return state, model, lr


def open_session(args: argparse.Namespace, env: DistEnv, stop: StopFlag,
                 folder: RunFolder) -> Session:
    """Build everything a run needs (see the module notes); resumes from ``last.pth``."""
    resume = _resume_path(args)
    ckpt = _read_resume(resume) if resume else None
    saved = (ckpt or {}).get("args")
    recipe = resolve_recipe(args, saved["recipe"] if ckpt else None)
    options = resolve_options(args, saved)
    if ckpt:
        if args.model and args.model != ckpt.get("model_name"):
            raise CommandError(f"{resume} was trained as {ckpt.get('model_name')}, not "
                               f"{args.model}; pass --no-resume to start over, or another --out")
        refuse_changed_flags(recipe, options, saved, resume)
    deterministic = _configure_process(args, env, options, recipe)
    data = build_data(options, recipe.seed)
    num_classes = _num_classes(args, ckpt, data)
    net = build_model(recipe, num_classes, None if ckpt else args.finetune, _say(env))
    data_config = data_config_for(recipe, net)
    set_transforms(data, recipe, data_config)
    seeded, sampler, train_loader, val_loader, steps = _loaders(recipe, options, env, data)
    state, model, lr = _state(args, env, recipe, net, steps)
    amp_dtype = amp_dtype_for(args.amp, env.device)
    mixup, criterion = mixup_and_loss(recipe, num_classes)
    eval_model = model
    if env.distributed:
        model = nn.parallel.DistributedDataParallel(
            model, device_ids=[env.device.index] if env.device.type == "cuda" else None)
    trained_seconds = _restore(state, ckpt, resume, env, recipe, num_classes) if ckpt else 0.0
    finished = state.position.epoch >= recipe.epochs
    log = RunLog(args.out, enabled=env.is_main, tensorboard=not args.no_tensorboard
                 and not finished, resumed_at=state.position.num_updates if ckpt else None)
    loop = EpochLoop(model=model, criterion=criterion, mixup=mixup, amp_dtype=amp_dtype,
                     clip_grad=recipe.clip_grad, clip_mode=recipe.clip_mode, epochs=recipe.epochs,
                     model_name=recipe.model, env=env, stop=stop, log=log)
    return Session(
        args=args, env=env, recipe=recipe, options=options, folder=folder, data=data,
        num_classes=num_classes, state=state, loop=loop, seeded=seeded, sampler=sampler,
        train_loader=train_loader, val_loader=val_loader, steps=steps, eval_model=eval_model,
        record=_record(recipe, options, data, num_classes, data_config),
        run_args=_run_args(args, env, recipe, options, amp_dtype, deterministic, lr),
        resumed_from=resume, trained_seconds=trained_seconds,
    )


def _record(recipe: Recipe, options: RunOptions, data: Data, num_classes: int,
            data_config: dict[str, Any]) -> dict[str, Any]:
    """What the checkpoints say about the model (``biformer.checkpoint.record_of``)."""
    names = data.class_names if data.class_names and len(data.class_names) == num_classes else None
    return {"format": TRAIN_STATE_FORMAT, "model_name": recipe.model,
            "model_kwargs": dict(recipe.model_kwargs), "num_classes": num_classes,
            "class_names": names, "data_config": data_config, "dataset": options.dataset}


def _say(env: DistEnv):
    return lambda text: print(text, flush=True) if env.is_main else None


def _restore(state: RunState, ckpt: dict[str, Any], path: str, env: DistEnv, recipe: Recipe,
             num_classes: int) -> float:
    """Load ``ckpt`` into ``state``, the random state last (nothing may draw after it);
    returns the training time the checkpoint had accumulated."""
    if ckpt.get("num_classes") != num_classes:
        raise CommandError(f"{path} has {ckpt.get('num_classes')} classes, the data "
                           f"{num_classes}; pass --no-resume to start over")
    try:
        state.load_state_dict(ckpt)
    except (RuntimeError, ValueError, KeyError) as err:
        lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
        detail = next((ln for ln in lines if not ln.endswith(":")), type(err).__name__)
        raise CommandError(f"cannot resume from {path}: its state does not fit this run: "
                           f"{detail[:240]}; pass --no-resume to start over") from None
    pos, say = state.position, _say(env)
    where = (f"epoch {pos.epoch + 1}, step {pos.step}" if pos.step
             else f"the end of epoch {pos.epoch}")
    say(f"resuming from {path} ({where})")
    rngs = ckpt.get("rng") or []
    if len(rngs) == env.world_size:
        restore_rng(rngs[env.rank])
    else:
        say(f"warning: the checkpoint holds the random state of {len(rngs)} process(es), this "
            f"run has {env.world_size}; reseeding")
        seed_everything(recipe.seed + env.rank + 1000 * pos.num_updates)
    return float(ckpt.get("wall_time_s") or 0.0)
