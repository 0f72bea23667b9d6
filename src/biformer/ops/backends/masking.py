"""Additive key masks for padded key tokens (the ``mask_padded_keys`` option)."""

from __future__ import annotations

import torch
from torch import Tensor

from ..regions import to_regions


def key_bias(
    size: tuple[int, int],
    valid: tuple[int, int],
    n_win: tuple[int, int],
    dtype: torch.dtype,
    device: torch.device,
) -> Tensor:
    """``[R, Lk]`` additive bias: 0 for real key tokens, -inf for padding beyond ``valid``."""
    h, w = size
    vh, vw = valid
    rows = torch.arange(h, device=device)[:, None] < vh
    cols = torch.arange(w, device=device)[None, :] < vw
    ok = (rows & cols)[None, :, :, None]  # 1, H, W, 1
    mask = to_regions(ok, n_win)[0, :, :, 0]  # R, L
    bias = torch.zeros(mask.shape, dtype=dtype, device=device)
    return bias.masked_fill(~mask, float("-inf"))
