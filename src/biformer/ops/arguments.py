"""Checks of the operators' non-tensor arguments: one clear error per mistake.

Every message names the argument, the value it got and, where there is one, the fix (in the
style ``f"{topk=} exceeds {num_regions=}"``). The checks only look at Python values and tensor
shapes, never at tensor data, so they cost microseconds and trace under ``torch.compile``
without graph breaks.
"""

from __future__ import annotations

import math
import os

import torch

from ..errors import InputError

__all__ = [
    "check_int",
    "check_n_win",
    "check_scale",
    "check_topk",
    "check_valid_size",
    "env_mib",
]

_INTS = (int, torch.SymInt)  # SymInt: sizes derived from shapes while torch.compile traces


def _is_int(value: object) -> bool:
    if isinstance(value, torch.Tensor):  # torch.jit.trace hands sizes over as 0-d tensors
        return value.dim() == 0 and not value.is_floating_point() and value.dtype != torch.bool
    return isinstance(value, _INTS) and not isinstance(value, bool)


def check_int(value: object, name: str, *, minimum: int = 1) -> int:
    """``value`` if it is an int (not a bool) of at least ``minimum``; TypeError/ValueError."""
    if not _is_int(value):
        raise TypeError(f"{name} must be an int, got {value!r} ({type(value).__name__})")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return value  # type: ignore[return-value]


def _int_pair(value: object, name: str, what: str, allow_int: bool) -> tuple[int, int]:
    """``value`` (a pair of ints, or with ``allow_int`` one int for both) as an ``(h, w)``."""
    if allow_int and _is_int(value):
        return value, value  # type: ignore[return-value]
    if isinstance(value, (tuple, list, torch.Size)) and len(value) == 2:
        if all(_is_int(v) for v in value):
            return value[0], value[1]
    form = "an int or a pair of ints" if allow_int else "a pair of ints"
    raise TypeError(f"{name} must be {form} {what}, got {value!r} ({type(value).__name__})")


def check_n_win(value: object, name: str = "n_win") -> tuple[int, int]:
    """Regions per side, an int or ``(Rh, Rw)`` of ints >= 1 (bools and floats refused)."""
    rh, rw = _int_pair(value, name, "(Rh, Rw) of regions per side", allow_int=True)
    if rh < 1 or rw < 1:
        raise ValueError(f"{name} must be >= 1 region per side, got {value!r}")
    return rh, rw


def check_valid_size(
    value: object, name: str, size: tuple[int, int], region_size: tuple[int, int]
) -> tuple[int, int]:
    """A ``valid = (H_valid, W_valid)`` part of an ``H x W`` map split into regions of
    ``region_size``: the top-left part that holds real tokens. It must leave every region at
    least one real token (otherwise its mean, or its attention, would divide by zero)."""
    vh, vw = _int_pair(value, name, "(H_valid, W_valid)", allow_int=False)
    (h, w), (sh, sw) = size, region_size
    if not (1 <= vh <= h and 1 <= vw <= w):
        raise ValueError(
            f"{name}={(vh, vw)} is out of range for the {h}x{w} map: it must be between "
            f"(1, 1) and ({h}, {w})"
        )
    if vh <= h - sh or vw <= w - sw:
        raise ValueError(
            f"{name}={(vh, vw)} leaves regions of the {h}x{w} map (regions of {sh}x{sw} tokens) "
            f"without a real token; it must be > ({h - sh}, {w - sw}): pad by less than one "
            "region, or use fewer regions (n_win)"
        )
    return vh, vw


def check_topk(topk: object, num_regions: int) -> int:
    """Routed regions per query region: an int between 1 and ``num_regions``."""
    check_int(topk, "topk", minimum=-(2**62))
    if topk < 1:  # type: ignore[operator]
        raise ValueError(f"{topk=} must be >= 1 (routed regions per query region)")
    if topk > num_regions:  # type: ignore[operator]
        raise ValueError(f"{topk=} exceeds {num_regions=}; lower topk or use more regions (n_win)")
    return topk  # type: ignore[return-value]


def check_scale(scale: object, name: str = "scale") -> float:
    """The softmax temperature: a finite real number (not a bool, not a tensor)."""
    if isinstance(scale, bool) or not isinstance(scale, (int, float, torch.SymFloat, *_INTS)):
        raise TypeError(
            f"{name} must be a real number (e.g. head_dim ** -0.5), got {scale!r} "
            f"({type(scale).__name__})"
        )
    if isinstance(scale, float) and not math.isfinite(scale):
        raise ValueError(f"{name} must be finite, got {scale}")
    return scale  # type: ignore[return-value]


def env_mib(variable: str, default_bytes: int, *, allow_zero: bool) -> int:
    """Bytes from the environment variable ``variable`` in MiB, else ``default_bytes``.

    The value must be a finite number of MiB, > 0 (or >= 0 with ``allow_zero``); anything else
    (``inf``, ``nan``, negative, words) raises an ``InputError`` (a ValueError) naming the
    variable and the value.
    """
    text = os.environ.get(variable, "").strip()
    if not text:
        return default_bytes
    try:
        mib = float(text)
    except ValueError:
        mib = math.nan
    low_ok = mib >= 0 if allow_zero else mib > 0
    if not (low_ok and math.isfinite(mib)):
        bound = ">= 0" if allow_zero else "> 0"
        raise InputError(
            f"{variable} must be a finite number of MiB {bound}, got {text!r}; unset it for the "
            f"default ({default_bytes / 2**20:g} MiB)"
        )
    return max(int(mib * 2**20), 0 if allow_zero else 1)
