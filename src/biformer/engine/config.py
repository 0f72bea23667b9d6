"""What a training run is: its recipe and data options, from the flags and a resumed checkpoint.

A new run starts from the demo recipe (no ``--data``) or the reference recipe and applies the
flags. A resumed run starts from the recipe its checkpoint recorded; flags may change only what
is well defined in the middle of a run (``RESUMABLE``: the number of epochs — the schedule is
stretched to the new end —, loader workers, the EMA). Any other flag that differs from the
checkpoint (learning rate, batch size, data, augmentation, ...) is refused in one line naming
the flags, so a checkpoint never records values a run did not train with.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Any

from ..checkpoint import parse_model_kwargs
from ..errors import CommandError
from .digits import DIGITS
from .recipe import DEMO, REFERENCE, Recipe, check_recipe
from .train_args import RECIPE_FLAGS

__all__ = ["RESUMABLE", "RunOptions", "refuse_changed_flags", "resolve_options",
           "resolve_recipe"]

RESUMABLE = frozenset({"epochs", "num_workers", "model_ema", "model_ema_decay"})
_OPTION_FLAGS = {"data": "--data", "dataset": "--dataset", "train_split": "--train-split",
                 "val_split": "--val-split", "limit_train_batches": "--limit-train-batches"}


@dataclass(frozen=True)
class RunOptions:
    """Where the data comes from and how much of it an epoch sees."""

    data: str | None
    dataset: str  # "" (image folder), "digits" or a timm dataset name
    train_split: str
    val_split: str
    limit_train_batches: int | None
    limit_val_batches: int | None

    def as_dict(self) -> dict[str, Any]:
        return dict(vars(self))


def _recipe_from(saved: dict[str, Any]) -> Recipe:
    fields = set(Recipe.__dataclass_fields__)
    base = Recipe(**{k: v for k, v in saved.items() if k in fields})
    return base.replace(scale=tuple(base.scale), ratio=tuple(base.ratio),
                        model_kwargs=dict(base.model_kwargs))


def _flag_changes(args: argparse.Namespace, base: Recipe) -> dict[str, Any]:
    changes: dict[str, Any] = {}
    for dest, name in RECIPE_FLAGS.items():
        value = getattr(args, dest, None)
        if value is not None:
            changes[name] = tuple(value) if isinstance(value, list) else value
    if changes.get("aa") in ("none", "None", ""):
        changes["aa"] = None
    new_model = "model" in changes and changes["model"] != base.model
    if args.model_kwargs is not None:
        parsed = parse_model_kwargs(args.model_kwargs)
        changes["model_kwargs"] = parsed if new_model else {**base.model_kwargs, **parsed}
    elif new_model:
        changes["model_kwargs"] = {}  # the demo's shrinking applies to the demo model only
    return changes


def resolve_recipe(args: argparse.Namespace, saved: dict[str, Any] | None) -> Recipe:
    """The recipe of this run: the saved one (resume) or the demo/reference one, then flags."""
    if saved is not None:
        base = _recipe_from(saved)
    elif args.data is None and args.dataset in (None, DIGITS):
        base = DEMO
    else:
        base = REFERENCE
    recipe = base.replace(**_flag_changes(args, base))
    check_recipe(recipe)
    return recipe


def resolve_options(args: argparse.Namespace, saved: dict[str, Any] | None) -> RunOptions:
    """The data options: the flags, else the checkpoint's (resume), else the defaults."""
    saved = saved or {}

    def pick(name: str, default: Any) -> Any:
        value = getattr(args, name, None)
        return value if value is not None else saved.get(name, default)

    data = pick("data", None)
    dataset = pick("dataset", None)
    if dataset is None:
        dataset = DIGITS if data is None else ""
    for name in ("limit_train_batches", "limit_val_batches"):
        value = getattr(args, name, None)
        if value is not None and value < 1:
            raise CommandError(f"--{name.replace('_', '-')} must be >= 1, got {value}")
    return RunOptions(data=data, dataset=dataset, train_split=pick("train_split", "train"),
                      val_split=pick("val_split", "val"),
                      limit_train_batches=pick("limit_train_batches", None),
                      limit_val_batches=args.limit_val_batches)


def _show(value: Any) -> str:
    if isinstance(value, (tuple, list)):
        return " ".join(_show(v) for v in value)
    if isinstance(value, dict):
        return " ".join(f"{k}={_show(v)}" for k, v in value.items()) or "{}"
    return "none" if value is None else str(value)


def refuse_changed_flags(recipe: Recipe, options: RunOptions, saved: dict[str, Any],
                         path: str) -> None:
    """Raise ``CommandError`` naming every flag that differs from the checkpoint's run."""
    before = _recipe_from(saved["recipe"])
    flags = {name: dest for dest, name in RECIPE_FLAGS.items()}
    diffs = [f"{'--' + flags.get(f, f).replace('_', '-')} {_show(getattr(recipe, f))} "
             f"(checkpoint: {_show(getattr(before, f))})"
             for f in Recipe.__dataclass_fields__
             if f not in RESUMABLE and getattr(recipe, f) != getattr(before, f)]
    diffs += [f"{flag} {_show(getattr(options, key))} (checkpoint: {_show(saved.get(key))})"
              for key, flag in _OPTION_FLAGS.items() if getattr(options, key) != saved.get(key)]
    if diffs:
        raise CommandError(
            f"cannot resume {path} with other settings: {'; '.join(diffs)}. Drop these flags to "
            "resume, or start over with --no-resume or another --out")
