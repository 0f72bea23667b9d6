"""Region bookkeeping shared by every BRA backend.

Vocabulary used throughout the package: ``n_win = (Rh, Rw)`` is the number of regions per side,
``num_regions = Rh * Rw`` (``R``) the number of regions, and ``region_size = (H // Rh, W // Rw)``
the tokens per region (``L = rh * rw`` of them). A feature map in NHWC layout ``[B, H, W, C]`` is
split into ``R`` non-overlapping regions; region ``r = i * Rw + j`` is the one in region row ``i``
and region column ``j`` (raster order, as in the official implementation). Inside a region,
tokens are in raster order too. Channels of a multi-head tensor are laid out ``(head, head_dim)``.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = [
    "as_pair",
    "to_regions",
    "from_regions",
    "region_mean",
    "region_counts",
]


def as_pair(value: int | tuple[int, int] | list[int], name: str = "n_win") -> tuple[int, int]:
    """Return ``value`` as an ``(h, w)`` pair of positive ints."""
    if isinstance(value, int):
        pair = (value, value)
    else:
        pair = tuple(int(v) for v in value)
        if len(pair) != 2:
            raise ValueError(f"{name} must be an int or a pair of ints, got {value!r}")
    if pair[0] < 1 or pair[1] < 1:
        raise ValueError(f"{name} must be positive, got {value!r}")
    return pair  # type: ignore[return-value]


def to_regions(x: Tensor, n_win: tuple[int, int]) -> Tensor:
    """NHWC grid ``[B, H, W, C]`` -> region-major ``[B, Rh*Rw, (H/Rh)*(W/Rw), C]`` (a copy)."""
    b, h, w, c = x.shape
    rh, rw = n_win
    x = x.reshape(b, rh, h // rh, rw, w // rw, c).transpose(2, 3)
    return x.reshape(b, rh * rw, (h // rh) * (w // rw), c)


def from_regions(x: Tensor, n_win: tuple[int, int], size: tuple[int, int]) -> Tensor:
    """Region-major ``[B, Rh*Rw, L, C]`` -> NHWC grid ``[B, H, W, C]`` with ``(H, W) = size``."""
    b, _, _, c = x.shape
    rh, rw = n_win
    h, w = size
    x = x.reshape(b, rh, rw, h // rh, w // rw, c).transpose(2, 3)
    return x.reshape(b, h, w, c)


def region_counts(
    size: tuple[int, int], valid: tuple[int, int], n_win: tuple[int, int], device=None
) -> Tensor:
    """Number of valid (unpadded) tokens per region, ``[Rh*Rw]`` float tensor.

    ``size`` is the padded grid size, ``valid`` the top-left part that holds real tokens.
    """
    (h, w), (vh, vw), (rh, rw) = size, valid, n_win
    sh, sw = h // rh, w // rw
    rows = (vh - torch.arange(rh, device=device) * sh).clamp(0, sh)
    cols = (vw - torch.arange(rw, device=device) * sw).clamp(0, sw)
    return (rows[:, None] * cols[None, :]).reshape(-1).to(torch.float32)


def region_mean(
    x: Tensor, n_win: tuple[int, int], *, valid: tuple[int, int] | None = None
) -> Tensor:
    """Mean of each region: NHWC ``[B, H, W, C]`` -> ``[B, Rh*Rw, C]``.

    Written as reshape + mean so that it traces to ONNX with dynamic H and W. With ``valid``, the
    grid is taken as zero padded beyond ``valid = (H_valid, W_valid)`` and each region is averaged
    over its real tokens only (``avg_pool2d(..., ceil_mode=True, count_include_pad=False)``).
    """
    b, h, w, c = x.shape
    rh, rw = n_win
    grid = x.reshape(b, rh, h // rh, rw, w // rw, c)
    if valid is None or tuple(valid) == (h, w):
        return grid.mean(dim=(2, 4)).reshape(b, rh * rw, c)
    counts = region_counts((h, w), valid, n_win, device=x.device).to(x.dtype)
    return grid.sum(dim=(2, 4)).reshape(b, rh * rw, c) / counts[None, :, None]
