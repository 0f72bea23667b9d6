"""Loading checkpoints safely: official BiFormer files, our own, ``.pth`` or ``.safetensors``.

``load_checkpoint(model, path)`` reads tensors only (``torch.load(weights_only=True)`` or
safetensors: a checkpoint never runs code), unwraps training checkpoints, strips wrapper
prefixes, converts the official layout through the model's ``checkpoint_filter`` and loads
strictly, with errors that say which keys are missing or unexpected and why.
"""

from __future__ import annotations

import argparse
import pickle
import re
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from .models.base import describe_layout, known_layouts, strip_wrapper_prefixes

__all__ = ["CheckpointError", "LoadResult", "load_checkpoint", "read_checkpoint"]

_SHOWN = 5  # keys listed per category in error messages


class CheckpointError(ValueError):
    """A checkpoint that cannot be read, or whose weights do not fit the model."""


@dataclass(frozen=True)
class LoadResult:
    """What ``load_checkpoint`` did: the keys it could not load (all empty on a strict load)."""

    missing_keys: list[str] = field(default_factory=list)
    unexpected_keys: list[str] = field(default_factory=list)
    mismatched_keys: list[str] = field(default_factory=list)  # shape differs: left as it was
    entry: str = ""  # the checkpoint entry the weights came from ("model", "state_dict", ...)


def _torch_load(path: Path, map_location: Any) -> Any:
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        text = str(err)
        if "weights only" in text.lower() and ("global" in text.lower() or "class" in text):
            needed = re.search(r"Unsupported global: GLOBAL (\S+)", text)
            what = f"it needs {needed.group(1)}" if needed else text.strip().splitlines()[0]
            raise CheckpointError(
                f"refusing to load {path}: it stores Python objects that can only be rebuilt by "
                f"running code ({what}). Only tensors and plain containers are read. If you "
                "trust the file, re-save its weights in a trusted environment with "
                "torch.save(model.state_dict(), ...) or as .safetensors"
            ) from None
        raise CheckpointError(
            f"cannot read {path}: not a PyTorch checkpoint, or a corrupt/truncated file "
            f"({_reason(err)})"
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError, AttributeError, ImportError) as err:
        raise CheckpointError(
            f"cannot read {path}: not a PyTorch checkpoint, or a corrupt/truncated file "
            f"({_reason(err)})"
        ) from None


def _reason(err: BaseException) -> str:
    """One line about ``err`` (the unpickler's own reason when torch wraps it in advice)."""
    text = str(err)
    found = re.search(r"WeightsUnpickler error: ([^\n]+)", text)
    line = found.group(1) if found else (text.strip().splitlines() or [""])[0]
    return f"{type(err).__name__}: {line.strip()}"


def _safetensors_load(path: Path, map_location: Any) -> dict[str, Tensor]:
    from safetensors.torch import load_file

    device = str(map_location) if map_location is not None else "cpu"
    try:
        return load_file(str(path), device=device)
    except Exception as err:  # noqa: BLE001 - safetensors raises its own error types
        raise CheckpointError(
            f"cannot read {path}: not a valid .safetensors file ({type(err).__name__}: {err})"
        ) from None


def read_checkpoint(
    path: str | Path, *, use_ema: bool = False, map_location: Any = "cpu"
) -> tuple[dict[str, Tensor], str]:
    """The state_dict stored in ``path`` and the entry it came from.

    Training checkpoints are unwrapped (``state_dict`` or ``model``; with ``use_ema``,
    ``state_dict_ema`` or ``model_ema``); ``module.``/``_orig_mod.`` prefixes are removed.
    Raises ``FileNotFoundError`` or ``CheckpointError`` naming the path.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint file not found: {path}")
    if path.is_dir():
        raise CheckpointError(f"{path} is a directory; pass the checkpoint file inside it")
    if path.suffix == ".safetensors":
        checkpoint: Any = _safetensors_load(path, map_location)
    else:
        checkpoint = _torch_load(path, map_location)
    if not isinstance(checkpoint, Mapping):
        raise CheckpointError(
            f"{path} holds a {type(checkpoint).__name__}, not a state_dict (a mapping of "
            "parameter names to tensors)"
        )
    entry = ""
    wanted = ("state_dict_ema", "model_ema") if use_ema else ("state_dict", "model")
    for key in wanted:
        if isinstance(checkpoint.get(key), Mapping):
            entry = key
            break
    if use_ema and not entry:
        raise CheckpointError(
            f"{path} has no EMA weights (no 'model_ema' or 'state_dict_ema' entry; its entries: "
            f"{sorted(map(str, checkpoint))[:10]}); load it with use_ema=False"
        )
    state_dict = checkpoint[entry] if entry else checkpoint
    out = {}
    for key, value in state_dict.items():
        if not isinstance(value, Tensor):
            raise CheckpointError(
                f"{path}: entry {entry or '<top level>'!r} is not a state_dict: {key!r} holds a "
                f"{type(value).__name__}, not a tensor"
            )
        out[strip_wrapper_prefixes(str(key))] = value
    return out, entry


def _layout_hint(model_shapes: Mapping[str, tuple[int, ...]],
                 ckpt_shapes: Mapping[str, tuple[int, ...]]) -> str:
    """A sentence naming the model the checkpoint probably belongs to, if it can tell."""
    ours, theirs = describe_layout(model_shapes), describe_layout(ckpt_shapes)
    if theirs is None:
        return ("it does not look like a BiFormer checkpoint (no 'stages.*.blocks.*' or official "
                "'stages.*.*' weights)")
    if ours is None or ours == theirs:
        return ""
    names = known_layouts()

    def name(layout: tuple[str, tuple[int, ...], tuple[int, ...]]) -> str:
        family, depths, dims = layout
        known = names.get(layout)
        return f"{known} ({family}: depths {depths}, dims {dims})" if known else (
            f"a {family} model with depths {depths}, dims {dims}")

    return f"the checkpoint is probably of {name(theirs)}, but the model is {name(ours)}"


def _check_fit(model: nn.Module, state_dict: Mapping[str, Tensor], path: Path,
               strict: bool) -> tuple[list[str], list[str], list[str]]:
    expected = model.state_dict()
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    mismatched = [k for k in state_dict
                  if k in expected and tuple(state_dict[k].shape) != tuple(expected[k].shape)]
    if not strict or not (missing or unexpected or mismatched):
        return missing, unexpected, mismatched

    lines = [f"{path} does not fit {_model_name(model)}:"]
    if missing:
        lines.append(f"  missing keys ({len(missing)}): {', '.join(missing[:_SHOWN])}"
                     + (", ..." if len(missing) > _SHOWN else ""))
    if unexpected:
        lines.append(f"  unexpected keys ({len(unexpected)}): {', '.join(unexpected[:_SHOWN])}"
                     + (", ..." if len(unexpected) > _SHOWN else ""))
    if mismatched:
        shown = [f"{k} {tuple(state_dict[k].shape)} vs {tuple(expected[k].shape)}"
                 for k in mismatched[:_SHOWN]]
        lines.append(f"  shape mismatches ({len(mismatched)}, checkpoint vs model): "
                     + "; ".join(shown) + ("; ..." if len(mismatched) > _SHOWN else ""))
    head_only = (not missing and not unexpected
                 and all(k.startswith("head.") for k in mismatched))
    if head_only:
        n_ckpt = state_dict["head.weight"].shape[0] if "head.weight" in state_dict else "?"
        lines.append(
            f"Probable cause: the checkpoint's classifier has {n_ckpt} classes and the model's "
            f"{getattr(model, 'num_classes', '?')}. Create the model with num_classes={n_ckpt}, "
            "or pass strict=False to load everything else and keep the new classifier's "
            "initialisation."
        )
    else:
        hint = _layout_hint({k: tuple(v.shape) for k, v in expected.items()},
                            {k: tuple(v.shape) for k, v in state_dict.items()})
        cause = hint or "a checkpoint of another model or of another configuration"
        lines.append(f"Probable cause: {cause}. Create the matching model, or pass "
                     "strict=False to load only what fits.")
    raise CheckpointError("\n".join(lines))


def _model_name(model: nn.Module) -> str:
    cfg = getattr(model, "pretrained_cfg", None) or {}
    return cfg.get("architecture") or type(model).__name__


def load_checkpoint(
    model: nn.Module,
    path: str | Path,
    *,
    strict: bool = True,
    use_ema: bool = False,
    map_location: Any = "cpu",
) -> LoadResult:
    """Load the weights in ``path`` into ``model`` (in place) and report what was loaded.

    Accepts official BiFormer checkpoints (``{"model": state_dict}`` in the original layout),
    this package's own, DDP/``torch.compile`` prefixed ones and ``.safetensors`` files.

    Args:
        model: the model to fill; its ``checkpoint_filter`` (BiFormer models) converts the
            official layout.
        path: ``.pth``/``.pt``/``.bin`` (read with ``weights_only=True``) or ``.safetensors``.
        strict: every key must match in name and shape (otherwise ``CheckpointError`` lists
            the differences and their probable cause). ``strict=False`` loads what fits and
            warns about the rest, which keeps its current values.
        use_ema: load the EMA weights (``model_ema``/``state_dict_ema``); error if absent.
        map_location: where the tensors are read to.

    Returns:
        ``LoadResult`` with the missing, unexpected and shape-mismatched keys.
    """
    path = Path(path)
    state_dict, entry = read_checkpoint(path, use_ema=use_ema, map_location=map_location)
    convert = getattr(model, "checkpoint_filter", None)
    if callable(convert):
        state_dict = convert(state_dict)
    missing, unexpected, mismatched = _check_fit(model, state_dict, path, strict)
    if mismatched:
        state_dict = {k: v for k, v in state_dict.items() if k not in set(mismatched)}
    model.load_state_dict(state_dict, strict=strict)
    if missing or mismatched or unexpected:
        warnings.warn(
            f"load_checkpoint({path}, strict=False): {len(missing)} missing and "
            f"{len(mismatched)} shape-mismatched parameters keep their current values "
            f"(e.g. {(mismatched + missing)[:_SHOWN]}); {len(unexpected)} checkpoint keys unused",
            stacklevel=2,
        )
    return LoadResult(missing, unexpected, mismatched, entry)
