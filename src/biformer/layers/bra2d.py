"""Bi-Level Routing Attention for NCHW feature maps of any size (plug-and-play for CNNs).

Semantics of the official refactored NCHW module (``nchwBRA``), parameter names included
(``qkv_linear``, ``output_linear``, ``lepe``):

* the region size is derived from ``n_win``: ``(max(H // n_win, 1), max(W // n_win, 1))``;
* queries, keys and values come from a 1x1 conv on the *unpadded* input; they are then
  zero-padded at the bottom/right to a multiple of the region size, so the region grid is
  ``(ceil(H / rh), ceil(W / rw))``, which can exceed ``n_win`` when H or W is not a multiple
  of ``n_win`` (e.g. H=600, n_win=7: regions of 85 rows, 8 region rows, 80 padded rows);
* region means for routing average real tokens only (padding is excluded);
* routing uses the raw affinity ``q_r @ k_r^T`` (no scale, no softmax weights);
* token attention sees padded keys as zeros (they take part in the softmax, as in the
  reference); ``mask_padded_keys=True`` excludes them instead (not the reference's numbers);
* LePE runs on the unpadded values; the output is cropped back to ``H x W``.

With fewer than ``n_win`` rows or columns (1-token regions) ``topk`` is clamped to the number of
regions, where the reference would fail.
"""

from __future__ import annotations

import math

import torch.nn.functional as F
from torch import Tensor, nn

from ..ops import region_mean, routed_attention, routed_attention_with_weights, topk_routing
from .checks import check_feature_map, check_heads
from .taps import RoutingTap

__all__ = ["BRA2d", "region_grid"]


def region_grid(size: tuple[int, int], n_win: int) -> tuple[tuple[int, int], tuple[int, int]]:
    """``(region_size, regions)`` that BRA2d uses for an ``H x W`` map."""
    h, w = size
    rs = (max(h // n_win, 1), max(w // n_win, 1))
    return rs, (math.ceil(h / rs[0]), math.ceil(w / rs[1]))


class BRA2d(nn.Module):
    """Bi-Level Routing Attention, NCHW in and NCHW out, any spatial size.

    Args:
        dim: channels.
        num_heads: attention heads (must divide ``dim``).
        n_win: regions per side for inputs whose size is a multiple of it (see module notes).
        qk_scale: softmax temperature (default ``dim ** -0.5``, the official convention).
        topk: key regions routed to each query region.
        side_dwconv: LePE depthwise kernel on values (0 disables it).
        auto_pad: True (default) pads any size as the reference does; False requires H and W to
            be multiples of ``n_win`` and raises otherwise.
        mask_padded_keys: exclude padded keys from attention (off: reference numbers).
        backend: routed-attention backend.

    Shape:
        ``forward(x)``: ``[B, dim, H, W]`` -> ``[B, dim, H, W]``.
        ``forward(x, ret_attn_mask=True)`` -> ``(out, attn [B, heads, R, Lq, topk*Lk])``.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int = 8,
        n_win: int = 7,
        qk_scale: float | None = None,
        topk: int = 4,
        side_dwconv: int = 3,
        auto_pad: bool = True,
        *,
        mask_padded_keys: bool = False,
        backend: str = "auto",
    ):
        super().__init__()
        check_heads(dim, num_heads, "dim")
        if n_win < 1:
            raise ValueError(f"n_win must be >= 1, got {n_win}")
        if not 1 <= topk <= n_win * n_win:
            raise ValueError(
                f"topk={topk} must be between 1 and n_win**2={n_win * n_win}; lower topk or "
                "raise n_win"
            )
        if side_dwconv < 0 or (side_dwconv > 0 and side_dwconv % 2 == 0):
            raise ValueError(f"side_dwconv must be 0 or an odd kernel size, got {side_dwconv}")
        self.dim = dim
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.n_win = n_win
        self.topk = topk
        self.scale = qk_scale or dim**-0.5
        self.auto_pad = auto_pad
        self.mask_padded_keys = mask_padded_keys
        self.backend = backend
        self.lepe = (
            nn.Conv2d(dim, dim, side_dwconv, padding=side_dwconv // 2, groups=dim)
            if side_dwconv > 0
            else None
        )
        self.qkv_linear = nn.Conv2d(dim, 3 * dim, kernel_size=1)
        self.output_linear = nn.Conv2d(dim, dim, kernel_size=1)
        self.routing_tap = RoutingTap()

    def extra_repr(self) -> str:
        return (
            f"dim={self.dim}, num_heads={self.num_heads}, n_win={self.n_win}, topk={self.topk}, "
            f"scale={self.scale:.4g}, mask_padded_keys={self.mask_padded_keys}, "
            f"backend={self.backend!r}"
        )

    def forward(self, x: Tensor, ret_attn_mask: bool = False):
        check_feature_map(x, self.dim, "NCHW", type(self).__name__)
        _, _, h, w = x.shape
        if not self.auto_pad and (h % self.n_win or w % self.n_win):
            raise ValueError(
                f"input size {(h, w)} is not a multiple of n_win={self.n_win} and auto_pad=False; "
                "set auto_pad=True (any size) or resize the input"
            )
        region_size, regions = region_grid((h, w), self.n_win)
        hp, wp = regions[0] * region_size[0], regions[1] * region_size[1]

        qkv = self.qkv_linear(x)  # B, 3C, H, W
        v = qkv[:, 2 * self.dim :]
        if (hp, wp) != (h, w):
            qkv = F.pad(qkv, (0, wp - w, 0, hp - h))  # zero padding after the projection
        q, k, v_pad = qkv.permute(0, 2, 3, 1).split(self.dim, dim=-1)  # NHWC views

        valid = (h, w)
        q_regions = region_mean(q.detach(), regions, valid=valid)  # B, R, C
        k_regions = region_mean(k.detach(), regions, valid=valid)
        topk = min(self.topk, regions[0] * regions[1])
        weights, index = topk_routing(q_regions, k_regions, topk=topk, scale=None)
        weights, index, _ = self.routing_tap(weights, index, regions)

        key_valid = valid if self.mask_padded_keys and (hp, wp) != (h, w) else None
        attn = None
        if ret_attn_mask:
            out, attn = routed_attention_with_weights(
                q, k, v_pad, index, regions=regions, num_heads=self.num_heads,
                scale=self.scale, key_valid=key_valid,
            )
            b, r = x.shape[0], regions[0] * regions[1]
            attn = attn.view(b, r, *attn.shape[1:]).transpose(1, 2)
        else:
            out = routed_attention(
                q, k, v_pad, index, regions=regions, num_heads=self.num_heads,
                scale=self.scale, key_valid=key_valid, backend=self.backend,
            )
        out = out[:, :h, :w].permute(0, 3, 1, 2)  # NCHW view
        if self.lepe is not None:
            out = out + self.lepe(v)
        out = self.output_linear(out)
        if ret_attn_mask:
            return out, attn
        return out
