"""Building models by name and loading weights into them, with one-line errors.

Models come from ``timm.create_model`` (``import biformer`` registers the BiFormer family);
weights from ``biformer.load_checkpoint`` (official layout or ours), except the EMA weights of
our training checkpoints (entry ``ema``), read here.
"""

from __future__ import annotations

import ast
import warnings
from typing import Any

import torch
from torch import nn

from ..errors import CommandError
from .checkpointing import CHECKPOINT_FORMAT, load_checkpoint_file, read_weights

__all__ = [
    "build_model",
    "checkpoint_record",
    "load_weights",
    "model_from_checkpoint",
    "parse_model_kwargs",
    "unwrap",
]


def parse_model_kwargs(items: list[str] | None) -> dict[str, Any]:
    """``["depths=1,1,2,1", "n_win=2", "auto_pad=True"]`` -> ``{"depths": (1, 1, 2, 1), ...}``."""
    out: dict[str, Any] = {}
    for item in items or []:
        key, sep, raw = item.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or not key.isidentifier():
            raise CommandError(
                f"--model-kwargs {item!r}: expected KEY=VALUE, e.g. depths=1,1,2,1 or n_win=2"
            )
        try:
            value = ast.literal_eval(raw.strip())
        except (ValueError, SyntaxError):
            value = raw.strip()  # a bare string, e.g. attn_backend=reference
        out[key] = tuple(value) if isinstance(value, list) else value
    return out


def build_model(
    name: str,
    *,
    num_classes: int,
    model_kwargs: dict[str, Any] | None = None,
    drop_path_rate: float | None = None,
) -> nn.Module:
    """``timm.create_model(name, num_classes=..., **model_kwargs)`` (random weights)."""
    import timm

    import biformer  # noqa: F401  (registers the BiFormer models with timm)

    if not timm.is_model(name):
        ours = ", ".join(biformer.models.MODEL_NAMES)
        raise CommandError(f"--model {name}: unknown model; BiFormer models: {ours}")
    kwargs = dict(model_kwargs or {})
    if drop_path_rate is not None:
        kwargs["drop_path_rate"] = drop_path_rate
    try:
        return timm.create_model(name, pretrained=False, num_classes=num_classes, **kwargs)
    except (TypeError, ValueError) as err:
        raise CommandError(f"--model {name} with {kwargs}: {str(err).splitlines()[0]}") from None


def unwrap(model: nn.Module) -> nn.Module:
    """The plain model inside DDP and ``torch.compile`` wrappers."""
    while True:
        if isinstance(model, nn.parallel.DistributedDataParallel):
            model = model.module
        elif hasattr(model, "_orig_mod"):
            model = model._orig_mod  # type: ignore[assignment]
        else:
            return model


def checkpoint_record(path: str, *, flag: str = "--checkpoint") -> dict[str, Any]:
    """What one of our checkpoints says about its model (empty for official/other files)."""
    ckpt = load_checkpoint_file(path, flag=flag)
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        return {}
    keys = ("model_name", "model_kwargs", "num_classes", "class_names", "data_config", "dataset")
    return {k: ckpt.get(k) for k in keys}


def model_from_checkpoint(
    path: str,
    *,
    model: str | None,
    model_kwargs: list[str] | None,
    num_classes: int | None,
    use_ema: bool,
    default_model: str | None = None,
) -> tuple[nn.Module, dict[str, Any]]:
    """The model a checkpoint holds, with its weights, and the checkpoint's record.

    ``model``, ``model_kwargs`` (``KEY=VALUE`` strings) and ``num_classes`` default to what one
    of our checkpoints records; an official file records nothing, so ``model`` (or
    ``default_model``) is then needed. A ``model`` that contradicts the record is an error.
    """
    record = checkpoint_record(path)
    name = model or record.get("model_name") or default_model
    if not name:
        raise CommandError(
            f"--model is needed: {path} does not say which model it holds "
            "(e.g. --model biformer_small for the official BiFormer-S file)"
        )
    if record.get("model_name") and model and model != record["model_name"]:
        raise CommandError(
            f"--checkpoint {path} holds a {record['model_name']}, not a {model}; "
            f"pass --model {record['model_name']} or leave --model out"
        )
    kwargs = parse_model_kwargs(model_kwargs) if model_kwargs is not None else dict(
        record.get("model_kwargs") or {}
    )
    classes = num_classes or int(record.get("num_classes") or 1000)
    net = build_model(name, num_classes=classes, model_kwargs=kwargs)
    load_weights(net, path, use_ema=use_ema)
    return net, record


def _one_line(err: Exception) -> str:
    """A ``CheckpointError`` (several lines, advice for the Python API) as one CLI line."""
    lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
    if not lines:
        return type(err).__name__
    cause = next((ln for ln in lines[1:] if ln.startswith("Probable cause")), None)
    if cause is None:
        return lines[0]
    cause = cause.removeprefix("Probable cause:").strip()
    cause = cause.split(". Create ")[0].rstrip(".")
    return (f"{lines[0].rstrip(':')}: {cause}; pass the matching --model, --model-kwargs or "
            "--num-classes")


def _classifier_prefix(model: nn.Module) -> str | None:
    name = (getattr(model, "pretrained_cfg", None) or {}).get("classifier")
    return name if isinstance(name, str) else None


def load_weights(
    model: nn.Module,
    path: str,
    *,
    use_ema: bool = False,
    new_head: bool = False,
    flag: str = "--checkpoint",
) -> bool:
    """Load ``path`` into ``model`` strictly, or raise :class:`CommandError` in one line.

    Args:
        use_ema: take the EMA weights of one of our checkpoints (entry ``ema``) or of a timm
            checkpoint (``model_ema``/``state_dict_ema``).
        new_head: fine-tuning: when only the classifier's shape differs (another number of
            classes), load everything else and keep the model's freshly initialised classifier.

    Returns:
        True when the classifier was left at its initialisation (``new_head`` case).
    """
    from ..checkpoint import CheckpointError, load_checkpoint

    if use_ema:
        state = read_weights(load_checkpoint_file(path, flag=flag), use_ema=True, flag=flag)
        convert = getattr(model, "checkpoint_filter", None)
        state = convert(state) if callable(convert) else state
        return _load_state(model, state, path=path, new_head=new_head, flag=flag)
    try:
        load_checkpoint(model, path, strict=True)
        return False
    except FileNotFoundError:
        raise CommandError(f"{flag} {path}: no such file") from None
    except CheckpointError as err:
        if not new_head:
            raise CommandError(f"{flag} {_one_line(err)}") from None
    state = read_weights(load_checkpoint_file(path, flag=flag), use_ema=False, flag=flag)
    convert = getattr(model, "checkpoint_filter", None)
    state = convert(state) if callable(convert) else state
    return _load_state(model, state, path=path, new_head=True, flag=flag)


def _load_state(
    model: nn.Module, state: dict[str, torch.Tensor], *, path: str, new_head: bool, flag: str
) -> bool:
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    mismatched = [k for k in state if k in expected and state[k].shape != expected[k].shape]
    head = _classifier_prefix(model)
    head_only = bool(head) and all(k.startswith(f"{head}.") for k in missing + mismatched)
    keep_head = new_head and head_only and not unexpected and bool(missing or mismatched)
    if (missing or unexpected or mismatched) and not keep_head:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (e.g. {missing[0]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (e.g. {unexpected[0]})")
        if mismatched:
            k = mismatched[0]
            parts.append(
                f"{len(mismatched)} of another shape (e.g. {k} {tuple(state[k].shape)} vs "
                f"{tuple(expected[k].shape)})"
            )
        raise CommandError(
            f"{flag} {path} does not fit the model: {', '.join(parts)} weights; it was saved for "
            "another model or configuration"
        )
    if keep_head:
        state = {k: v for k, v in state.items() if k not in set(mismatched)}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.load_state_dict(state, strict=not keep_head)
    return keep_head
