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

from .arguments import check_n_win, check_valid_size
from .checks import check_feature_maps

__all__ = [
    "to_regions",
    "from_regions",
    "region_mean",
    "region_counts",
]


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
    x: Tensor,
    n_win: int | tuple[int, int],
    *,
    valid: tuple[int, int] | None = None,
    validate: bool = True,
) -> Tensor:
    """Mean of each region: NHWC ``[B, H, W, C]`` -> ``[B, Rh*Rw, C]``.

    ``n_win`` is the number of regions per side (an int or ``(Rh, Rw)``); ``H`` and ``W`` must
    be multiples of it. Written as reshape + mean so that it traces to ONNX with dynamic H and
    W. With ``valid``, the grid is taken as zero padded beyond ``valid = (H_valid, W_valid)``
    and each region is averaged over its real tokens only (``avg_pool2d(..., ceil_mode=True,
    count_include_pad=False)``); every region must keep at least one real token.
    ``validate=False`` skips the argument checks (for callers that made them already).
    """
    n_win = check_n_win(n_win)
    if validate:
        valid = _check_region_mean(x, n_win, valid)
    b, h, w, c = x.shape
    rh, rw = n_win
    grid = x.reshape(b, rh, h // rh, rw, w // rw, c)
    if valid is None or tuple(valid) == (h, w):
        return grid.mean(dim=(2, 4)).reshape(b, rh * rw, c)
    counts = region_counts((h, w), valid, n_win, device=x.device).to(x.dtype)
    return grid.sum(dim=(2, 4)).reshape(b, rh * rw, c) / counts[None, :, None]


def _check_region_mean(x: Tensor, n_win: tuple[int, int], valid: object):
    """The checks of ``region_mean``; returns ``valid`` as a pair (or None)."""
    check_feature_maps((("x", x),), 4, "NHWC [batch, height, width, channels]")
    h, w = x.shape[1], x.shape[2]
    if h == 0 or w == 0:
        raise ValueError(f"x has an empty {h}x{w} map: height and width must be >= 1")
    if h % n_win[0] or w % n_win[1]:
        raise ValueError(
            f"x size {(h, w)} is not a multiple of {n_win=}; pad the map (and pass valid=) or "
            "change n_win"
        )
    if valid is None:
        return None
    return check_valid_size(valid, "valid", (h, w), (h // n_win[0], w // n_win[1]))
