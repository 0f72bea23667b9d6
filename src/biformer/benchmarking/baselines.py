"""Attention baselines for the operator benchmark: 7x7 window attention and global attention.

Both use ``F.scaled_dot_product_attention`` (fused kernels on CUDA, flash-style on CPU) and
take NHWC ``[B, H, W, C]`` maps. The ``*_core`` functions take queries, keys and values
(projections excluded); the modules add the qkv and output projections, like an attention layer.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["GlobalAttention", "WindowAttention", "global_attention_core", "window_attention_core"]


def _heads(x: Tensor, heads: int) -> Tensor:
    """``[N, L, C]`` -> ``[N, heads, L, C // heads]``."""
    n, length, c = x.shape
    return x.view(n, length, heads, c // heads).transpose(1, 2)


def window_attention_core(q: Tensor, k: Tensor, v: Tensor, *, num_heads: int,
                          window: int = 7) -> Tensor:
    """Attention inside non-overlapping ``window x window`` windows: NHWC in, NHWC out.

    H and W are zero-padded to a multiple of ``window`` (padded keys take part, as in Swin
    without its mask); the output is cropped back.
    """
    b, h, w, c = q.shape
    ph, pw = (-h) % window, (-w) % window
    if ph or pw:
        q, k, v = (F.pad(t, (0, 0, 0, pw, 0, ph)) for t in (q, k, v))
    hp, wp = h + ph, w + pw
    nh, nw = hp // window, wp // window

    def part(t: Tensor) -> Tensor:  # B, Hp, Wp, C -> B*nW, window*window, C
        t = t.reshape(b, nh, window, nw, window, t.shape[-1]).transpose(2, 3)
        return t.reshape(b * nh * nw, window * window, t.shape[-1])

    out = F.scaled_dot_product_attention(*(_heads(part(t), num_heads) for t in (q, k, v)))
    out = out.transpose(1, 2).reshape(b, nh, nw, window, window, -1).transpose(2, 3)
    return out.reshape(b, hp, wp, -1)[:, :h, :w]


def global_attention_core(q: Tensor, k: Tensor, v: Tensor, *, num_heads: int) -> Tensor:
    """Every token attends to every token of its image: NHWC in, NHWC out."""
    b, h, w, _ = q.shape
    out = F.scaled_dot_product_attention(
        *(_heads(t.reshape(b, h * w, t.shape[-1]), num_heads) for t in (q, k, v))
    )
    return out.transpose(1, 2).reshape(b, h, w, -1)


class _ProjectedAttention(nn.Module):
    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def core(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        raise NotImplementedError

    def forward(self, x: Tensor) -> Tensor:
        """``[B, H, W, C]`` -> ``[B, H, W, C]``."""
        q, k, v = self.qkv(x).chunk(3, dim=-1)
        return self.proj(self.core(q, k, v))


class WindowAttention(_ProjectedAttention):
    """qkv projection, 7x7 window attention (SDPA), output projection; NHWC in and out."""

    def __init__(self, dim: int, num_heads: int, window: int = 7):
        super().__init__(dim, num_heads)
        self.window = window

    def core(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        return window_attention_core(q, k, v, num_heads=self.num_heads, window=self.window)


class GlobalAttention(_ProjectedAttention):
    """qkv projection, global attention (SDPA), output projection; NHWC in and out."""

    def core(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        return global_attention_core(q, k, v, num_heads=self.num_heads)
