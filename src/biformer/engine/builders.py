"""The pieces of a training run, each from timm's factories: data, model, optimiser, schedule.

Every factory turns timm's assertion/value errors about a flag into one ``CommandError`` line
that names the flag.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset

from ..checkpoint import create_model, load_checkpoint
from ..errors import CommandError, InputError, one_line
from .config import RunOptions
from .digits import DIGITS, digits_dataset
from .folders import class_names_of, create_image_dataset, holdout, parse_holdout
from .recipe import Recipe, drop_path_for
from .transforms import create_eval_transform, create_train_transform

__all__ = ["Data", "build_data", "build_model", "build_optimizer", "build_scheduler",
           "data_config_for", "mixup_and_loss", "set_transforms"]


@dataclass
class Data:
    """The training and validation sets, their class names, and where validation comes from."""

    train: Dataset
    val: Dataset
    class_names: list[str] | None
    val_source: str


def build_data(options: RunOptions, seed: int) -> Data:
    """The datasets of a run (transforms are set later, by ``set_transforms``)."""
    if options.dataset == DIGITS:
        return Data(digits_dataset("train"), digits_dataset("val"),
                    [str(c) for c in range(10)], "embedded digits (val)")
    if options.data is None:
        raise CommandError(f"--dataset {options.dataset or 'folder'} needs --data DIR")
    train = create_image_dataset(options.dataset, options.data, options.train_split,
                                 is_training=True)
    names = class_names_of(train)
    fraction = parse_holdout(options.val_split) if not options.dataset else None
    if fraction is not None:
        train, val = holdout(train, fraction, seed)
        source = f"{fraction:g} of {options.data}/{options.train_split} held out (seed {seed})"
    else:
        class_map = {n: i for i, n in enumerate(names)} if names and not options.dataset else None
        try:
            val = create_image_dataset(options.dataset, options.data, options.val_split,
                                       is_training=False, class_map=class_map)
        except CommandError as err:
            raise CommandError(f"{err}; to validate on part of the training images instead, "
                               "hold them out with --val-split 0.1") from None
        source = f"{options.data}/{options.val_split}"
    if len(val) == 0:
        raise CommandError(f"--data {options.data}: the validation split is empty")
    return Data(train, val, names, source)


def data_config_for(recipe: Recipe, model: nn.Module) -> dict[str, Any]:
    """The model's data config (timm) with the recipe's image size and crop."""
    from timm.data import resolve_data_config

    cfg = dict(resolve_data_config({}, model=model))
    if recipe.img_size is not None:
        cfg["input_size"] = (cfg["input_size"][0], recipe.img_size, recipe.img_size)
    if recipe.crop_pct is not None:
        cfg["crop_pct"] = recipe.crop_pct
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in cfg.items()}


def set_transforms(data: Data, recipe: Recipe, data_config: dict[str, Any]) -> None:
    try:
        data.train.transform = create_train_transform(recipe, data_config)
    except (AssertionError, ValueError, KeyError, IndexError) as err:
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise CommandError(f"--aa {recipe.aa}: not an augmentation policy timm knows ({first}); "
                           "e.g. rand-m9-mstd0.5-inc1, original, augmix-m5-w4-d2 or none"
                           ) from None
    data.val.transform = create_eval_transform(data_config)


def build_model(recipe: Recipe, num_classes: int, finetune: str | None, say) -> nn.Module:
    """The model of the recipe, with fine-tuning weights when asked (random otherwise)."""
    try:
        net = create_model(recipe.model, biformer_only=False, num_classes=num_classes,
                           drop_path_rate=drop_path_for(recipe), **recipe.model_kwargs)
    except InputError as err:
        raise CommandError(f"--model {err}") from None
    if finetune:
        try:
            result = load_checkpoint(net, finetune, new_head=True)
        except InputError as err:
            raise CommandError(f"--finetune {one_line(err)}") from None
        fresh = any(k.startswith("head.") for k in result.missing_keys + result.mismatched_keys)
        say(f"fine-tuning from {finetune}"
            + (f" (new {num_classes}-class classifier)" if fresh else ""))
    return net


def build_optimizer(recipe: Recipe, net: nn.Module, lr: float) -> torch.optim.Optimizer:
    """timm's optimizer factory; no weight decay on norms, biases and ``no_weight_decay()``."""
    from timm.optim import create_optimizer_v2

    kwargs: dict[str, Any] = {}
    name = recipe.opt.lower()
    if any(k in name for k in ("adam", "lamb", "adan", "lion", "rmsprop")):
        kwargs["eps"] = recipe.opt_eps
    if name in ("sgd", "momentum", "nesterov", "rmsprop"):
        kwargs["momentum"] = recipe.momentum
    try:
        return create_optimizer_v2(net, opt=recipe.opt, lr=lr, weight_decay=recipe.weight_decay,
                                   **kwargs)
    except (AssertionError, ValueError, TypeError, KeyError) as err:
        raise CommandError(f"--opt {recipe.opt}: {str(err).splitlines()[0]}") from None


def build_scheduler(recipe: Recipe, optimizer: torch.optim.Optimizer, steps: int) -> Any:
    """timm's scheduler factory, stepped after every update (``step_update``)."""
    from timm.scheduler import create_scheduler_v2

    try:
        scheduler, _ = create_scheduler_v2(
            optimizer, sched=recipe.sched, num_epochs=recipe.epochs,
            warmup_epochs=recipe.warmup_epochs, warmup_lr=recipe.warmup_lr,
            min_lr=recipe.min_lr, step_on_epochs=False, updates_per_epoch=steps,
        )
    except (AssertionError, ValueError, TypeError, KeyError) as err:
        raise CommandError(f"--sched {recipe.sched}: {str(err).splitlines()[0]}") from None
    return scheduler


def mixup_and_loss(recipe: Recipe, num_classes: int) -> tuple[Any, nn.Module]:
    """timm's Mixup (or None) and the matching training loss."""
    from timm.data import Mixup
    from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy

    if recipe.mixup > 0 or recipe.cutmix > 0:
        mixup = Mixup(mixup_alpha=recipe.mixup, cutmix_alpha=recipe.cutmix,
                      prob=recipe.mixup_prob, switch_prob=recipe.mixup_switch_prob,
                      mode=recipe.mixup_mode, label_smoothing=recipe.smoothing,
                      num_classes=num_classes)
        return mixup, SoftTargetCrossEntropy()  # mixup smooths the targets itself
    if recipe.smoothing > 0:
        return None, LabelSmoothingCrossEntropy(smoothing=recipe.smoothing)
    return None, nn.CrossEntropyLoss()
