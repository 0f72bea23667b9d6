"""Checkpoint layouts: the official module names, wrapper prefixes, and which model a file fits.

The official checkpoints store ``downsample_layers.{i}`` and ``stages.{i}.{j}`` (T/S/B) or
``stages.{i}.blocks.{j}`` (STL); this package's modules are ``stem``, ``stages.{i}.downsample``
and ``stages.{i}.blocks.{j}``. ``checkpoint_filter_fn`` renames the former to the latter.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from .specs import MODEL_SPECS

__all__ = [
    "checkpoint_filter_fn",
    "describe_layout",
    "known_layouts",
    "strip_wrapper_prefixes",
    "unwrap_state_dict",
]

Layout = tuple[str, tuple[int, ...], tuple[int, ...]]  # (family, depths, dims)

_WRAPPER_PREFIXES = ("module.", "_orig_mod.")
_OFFICIAL_RENAMES: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"^downsample_layers\.0\."), "stem."),
    (re.compile(r"^downsample_layers\.([1-3])\."), r"stages.\1.downsample."),
    (re.compile(r"^stages\.(\d+)\.(\d+)\."), r"stages.\1.blocks.\2."),  # T/S/B blocks
)


def unwrap_state_dict(state_dict: Mapping[str, Any]) -> Mapping[str, Any]:
    """The weights inside a training checkpoint (``state_dict`` or ``model`` entry)."""
    for key in ("state_dict", "model"):
        inner = state_dict.get(key)
        if isinstance(inner, Mapping):
            return inner
    return state_dict


def strip_wrapper_prefixes(key: str) -> str:
    """Remove DDP (``module.``), torch.compile (``_orig_mod.``) and activation-checkpoint
    wrapper (``_checkpoint_wrapped_module.``) names from a parameter name."""
    changed = True
    while changed:
        changed = False
        for prefix in _WRAPPER_PREFIXES:
            if key.startswith(prefix):
                key, changed = key[len(prefix):], True
    return key.replace("_checkpoint_wrapped_module.", "")


def checkpoint_filter_fn(
    state_dict: Mapping[str, Any], model: nn.Module | None = None
) -> dict[str, Tensor]:
    """Rename an official BiFormer state_dict to this package's module layout.

    ``downsample_layers.0`` -> ``stem``, ``downsample_layers.{i}`` -> ``stages.{i}.downsample``,
    ``stages.{i}.{j}`` -> ``stages.{i}.blocks.{j}``. Unwraps ``{"model": ...}`` /
    ``{"state_dict": ...}`` and wrapper prefixes; keys in neither layout are passed through
    unchanged (strict loading then reports them), so nothing is dropped silently.
    """
    del model  # the renaming does not depend on the variant
    state_dict = unwrap_state_dict(state_dict)
    out = {strip_wrapper_prefixes(k): v for k, v in state_dict.items()}
    if any(k.startswith("stem.") for k in out):
        return out  # already in this package's layout
    renamed = {}
    for key, value in out.items():
        for pattern, repl in _OFFICIAL_RENAMES:
            new_key, n = pattern.subn(repl, key)
            if n:
                key = new_key
                break
        renamed[key] = value
    return renamed


def describe_layout(shapes: Mapping[str, tuple[int, ...]]) -> Layout | None:
    """``(family, depths, dims)`` read from the key names and shapes of a state_dict in this
    package's layout, or None if it is not a BiFormer state_dict."""
    depths, dims = [], []
    for i in range(4):
        pattern = re.compile(rf"^stages\.{i}\.blocks\.(\d+)\.")
        blocks = {int(m.group(1)) for k in shapes if (m := pattern.match(k))}
        depths.append(max(blocks) + 1 if blocks else 0)
        norm1 = shapes.get(f"stages.{i}.blocks.0.norm1.weight")
        dims.append(int(norm1[0]) if norm1 else 0)
    if not any(depths):
        return None
    if "stages.0.blocks.0.pos_embed.weight" in shapes:
        family = "biformer"
    elif "stages.0.blocks.0.attn.qkv_linear.weight" in shapes:
        family = "biformer_stl_nchw"
    else:
        family = "biformer_stl"
    return family, tuple(depths), tuple(dims)


def known_layouts() -> dict[Layout, str]:
    """``(family, depths, dims) -> model name`` of every registered model (for error hints).

    Read from the models themselves, built once on the ``meta`` device (no memory, no init).
    """
    return dict(_layouts(tuple(MODEL_SPECS)))


@functools.cache
def _layouts(names: tuple[str, ...]) -> tuple[tuple[Layout, str], ...]:
    import timm  # here: the registry is complete once biformer.models is imported

    found = []
    for name in names:
        with torch.device("meta"):
            model = timm.create_model(name)
        layout = describe_layout({k: tuple(v.shape) for k, v in model.state_dict().items()})
        if layout is not None:
            found.append((layout, name))
    return tuple(found)
