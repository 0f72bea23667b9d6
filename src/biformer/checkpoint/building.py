"""Models by name, and the model a checkpoint holds: the one path every command uses.

``model_from_checkpoint`` serves ``eval``, ``predict``, ``viz``, ``export``, the detection
backbones and fine-tuning: it reads the file once, takes the model's name, options and number of
classes from what our checkpoints record (or from the caller, or from the classifier's shape),
builds the model through ``timm.create_model`` and loads the weights with ``load_state``.
"""

from __future__ import annotations

import ast
import difflib
import os
from typing import Any

import timm
from torch import nn

from ..errors import CheckpointError, InputError
from .entries import record_of, select_weights
from .files import read_file
from .fit import load_state
from .loading import convert_layout

__all__ = ["check_model_name", "create_model", "model_from_checkpoint", "parse_model_kwargs"]


def check_model_name(name: str, *, biformer_only: bool = True) -> str:
    """``name`` if timm knows it (a BiFormer model unless ``biformer_only=False``).

    Raises ``InputError`` naming the close names.
    """
    from .. import models  # noqa: F401  (registers the family with timm)

    if not isinstance(name, str) or not name:
        raise InputError(f"model name must be a non-empty string, got {name!r}")
    base = name.split(".", 1)[0]  # "biformer_tiny.in1k" -> "biformer_tiny"
    ours = timm.list_models("*biformer*")
    if base in ours or (not biformer_only and timm.is_model(base)):
        return name
    close = difflib.get_close_matches(base, ours, n=3, cutoff=0.5)
    if not close and not biformer_only:
        close = difflib.get_close_matches(base, timm.list_models(), n=3, cutoff=0.6)
    hint = (f"did you mean {', '.join(close)}? " if close else "") + (
        f"(BiFormer models: {', '.join(ours)})")
    what = "not a BiFormer model" if timm.is_model(base) else "unknown model"
    raise InputError(f"{what} {name!r}; {hint}")


def parse_model_kwargs(items: list[str] | None) -> dict[str, Any]:
    """``["depths=1,1,2,1", "n_win=2", "auto_pad=True"]`` -> ``{"depths": (1, 1, 2, 1), ...}``."""
    out: dict[str, Any] = {}
    for item in items or []:
        key, sep, raw = item.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or not key.isidentifier():
            raise InputError(
                f"model option {item!r}: expected KEY=VALUE, e.g. depths=1,1,2,1 or n_win=2"
            )
        raw = raw.strip()
        value = _literal(raw)
        if isinstance(value, str) and "," in raw:  # a list with bare words: 4,2,2,global_lepe
            value = tuple(_literal(part.strip()) for part in raw.split(","))
        out[key] = tuple(value) if isinstance(value, list) else value
    return out


def _literal(text: str) -> Any:
    """A Python literal (``2``, ``1,1,2,1``, ``True``), else the text itself (``avg``)."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def create_model(name: str, *, biformer_only: bool = True, **kwargs: Any) -> nn.Module:
    """``timm.create_model(name, **kwargs)`` (random weights) with one-line errors."""
    check_model_name(name, biformer_only=biformer_only)
    try:
        return timm.create_model(name, pretrained=False, **kwargs)
    except (TypeError, ValueError, AssertionError) as err:
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise InputError(f"{name} with options {kwargs}: {first}") from None


def _head_classes(state_dict: dict) -> int | None:
    head = state_dict.get("head.weight")
    return int(head.shape[0]) if head is not None and head.ndim == 2 else None


def model_from_checkpoint(
    path: str | os.PathLike,
    *,
    model: str | None = None,
    model_kwargs: dict[str, Any] | None = None,
    num_classes: int | None = None,
    use_ema: bool = False,
    new_head: bool = False,
    default_model: str | None = None,
    biformer_only: bool = True,
    **overrides: Any,
) -> tuple[nn.Module, dict[str, Any]]:
    """The model a checkpoint holds, with its weights, and the checkpoint's record.

    Args:
        path: any checkpoint ``load_checkpoint`` reads.
        model: model name; default the one our checkpoints record, else ``default_model``.
            A name that contradicts the record is an error.
        model_kwargs: constructor options; default the recorded ones (ours) or none.
        num_classes: default the recorded number, else the classifier's rows, else timm's.
        use_ema: take the EMA weights.
        new_head: the classifier may differ from the checkpoint's (``num_classes=0`` for a
            headless backbone, or fine-tuning to other classes): it keeps its initialisation.
        biformer_only: refuse models other than BiFormer (``False``: any timm model).
        overrides: options applied on top of ``model_kwargs`` (e.g. ``n_win``, ``auto_pad``).

    Returns:
        ``(model, record)``; ``record`` holds what our checkpoints say (empty for others).
    """
    checkpoint = read_file(path)
    record = record_of(checkpoint)
    recorded = record.get("model_name")
    name = model or recorded or default_model
    if not name:
        raise CheckpointError(
            f"{path} does not say which model it holds; name it (model=..., --model on the "
            "command line), e.g. biformer_small for the official BiFormer-S file"
        )
    if recorded and model and model != recorded:
        raise CheckpointError(
            f"{path} holds a {recorded}, not a {model}; ask for {recorded} or leave the model "
            "name out"
        )
    state_dict, entry = select_weights(checkpoint, use_ema=use_ema, path=path)
    kwargs = dict(record.get("model_kwargs") or {}) if model_kwargs is None else dict(model_kwargs)
    kwargs.update(overrides)
    classes = next((c for c in (num_classes, kwargs.get("num_classes"),
                                record.get("num_classes"), _head_classes(state_dict))
                    if c is not None), None)
    if classes is not None:
        kwargs["num_classes"] = int(classes)
    net = create_model(name, biformer_only=biformer_only, **kwargs)
    load_state(net, convert_layout(net, state_dict), path=path, new_head=new_head, entry=entry)
    return net, record
