"""Argument and input checks shared by the attention layers: one clear error per mistake."""

from __future__ import annotations

from torch import Tensor

from ..ops.arguments import check_int
from ..ops.dispatch import AUTO, BACKENDS

__all__ = [
    "check_backend",
    "check_bra_options",
    "check_feature_map",
    "check_heads",
    "check_int",
    "check_side_dwconv",
]


def check_heads(dim: int, num_heads: int, name: str = "dim") -> None:
    """Raise unless ``dim`` and ``num_heads`` are positive ints and ``num_heads`` divides ``dim``."""
    check_int(dim, name)
    check_int(num_heads, "num_heads")
    if dim % num_heads:
        raise ValueError(
            f"{name}={dim} is not divisible by num_heads={num_heads}; choose num_heads among the "
            f"divisors of {name} (e.g. {[d for d in range(1, min(dim, 64) + 1) if dim % d == 0]})"
        )


def check_side_dwconv(side_dwconv: int) -> int:
    """The LePE kernel: 0 (off) or an odd size (even sizes would change the map size)."""
    check_int(side_dwconv, "side_dwconv", minimum=0)
    if side_dwconv > 0 and side_dwconv % 2 == 0:
        raise ValueError(
            f"side_dwconv must be 0 or an odd kernel size (an even one shifts the map by half a "
            f"token), got {side_dwconv}"
        )
    return side_dwconv


def check_backend(backend: str | None) -> str | None:
    """A layer's backend override: None (follow the default), ``"auto"`` or a backend name."""
    if backend is not None and backend not in (AUTO, *BACKENDS):
        raise ValueError(f"unknown backend {backend!r}; choose None or one of {(AUTO, *BACKENDS)}")
    return None if backend == AUTO else backend


def check_bra_options(dim: int, num_heads: int, n_win: int, topk: int, side_dwconv: int) -> None:
    """The options every Bi-Level Routing Attention layer shares."""
    check_heads(dim, num_heads, "dim")
    check_int(n_win, "n_win")
    check_int(topk, "topk", minimum=-(2**62))
    if not 1 <= topk <= n_win * n_win:
        raise ValueError(
            f"topk={topk} must be between 1 and the number of regions n_win**2={n_win * n_win}; "
            "lower topk or raise n_win"
        )
    check_side_dwconv(side_dwconv)


def check_feature_map(x: Tensor, dim: int, layout: str, module: str) -> None:
    """Validate a 4-D feature map in ``layout`` ("NHWC" or "NCHW") with ``dim`` channels."""
    if not isinstance(x, Tensor):
        raise TypeError(f"{module} expects a torch.Tensor, got {type(x).__name__}")
    if x.dim() != 4:
        raise ValueError(
            f"{module} expects a 4-D {layout} tensor, got shape {tuple(x.shape)}"
            + ("; add a batch dimension with x.unsqueeze(0)" if x.dim() == 3 else "")
        )
    if not x.is_floating_point():
        raise TypeError(
            f"{module} expects a floating-point input, got {x.dtype}; convert it with x.float()"
        )
    channels, size = (x.shape[-1], x.shape[1:3]) if layout == "NHWC" else (x.shape[1], x.shape[2:])
    if channels != dim:
        other = x.shape[1] if layout == "NHWC" else x.shape[-1]
        hint = ""
        if other == dim:
            wrong = "NCHW" if layout == "NHWC" else "NHWC"
            hint = f"; the input looks {wrong}: permute it to {layout}"
        raise ValueError(
            f"{module} was built for dim={dim} channels but the {layout} input "
            f"{tuple(x.shape)} has {channels}{hint}"
        )
    if 0 in size:
        raise ValueError(
            f"{module} got an empty {layout} map {tuple(x.shape)}: height and width must be >= 1"
        )
