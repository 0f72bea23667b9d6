"""LePE: the locally-enhanced positional encoding of BiFormer's attention layers."""

from __future__ import annotations

from torch import nn

__all__ = ["make_lepe"]


def make_lepe(dim: int, kernel_size: int) -> nn.Conv2d | None:
    """The depthwise ``kernel_size x kernel_size`` conv (same size, NCHW) or None when 0.

    ``kernel_size`` must be 0 (no LePE) or odd, so the output keeps the input's size.
    """
    if kernel_size == 0:
        return None
    return nn.Conv2d(dim, dim, kernel_size, padding=kernel_size // 2, groups=dim)
