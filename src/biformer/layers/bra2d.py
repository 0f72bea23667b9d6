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
from .checks import check_backend, check_bra_options, check_feature_map
from .lepe import make_lepe
from .taps import RoutingTap

__all__ = ["BRA2d", "region_layout"]


def region_layout(size: tuple[int, int], n_win: int) -> tuple[tuple[int, int], tuple[int, int]]:
    """``(region_size, n_win)`` that BRA2d uses for an ``H x W`` map: the tokens per region and
    the regions per side actually used (more than ``n_win`` when the size is not a multiple)."""
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
        backend: this layer's routed-attention backend; None (default) follows
            ``biformer.ops.use_backend`` and the process default (``biformer.ops.dispatch``).

    Shape:
        ``forward(x)``: ``[B, dim, H, W]`` -> ``[B, dim, H, W]``.
        ``forward(x, return_attention=True)`` (official name ``ret_attn_mask=True``) ->
        ``(out, attn [B, heads, R, Lq, topk*Lk])``, the attention weights (probabilities).
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
        backend: str | None = None,
    ):
        super().__init__()
        check_bra_options(dim, num_heads, n_win, topk, side_dwconv)
        self.dim = dim
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.n_win = n_win
        self.topk = topk
        self.scale = qk_scale or dim**-0.5
        self.auto_pad = auto_pad
        self.mask_padded_keys = mask_padded_keys
        self.backend = check_backend(backend)
        self.lepe = make_lepe(dim, side_dwconv)
        self.qkv_linear = nn.Conv2d(dim, 3 * dim, kernel_size=1)
        self.output_linear = nn.Conv2d(dim, dim, kernel_size=1)
        self.routing_tap = RoutingTap()

    def extra_repr(self) -> str:
        return (
            f"dim={self.dim}, num_heads={self.num_heads}, n_win={self.n_win}, topk={self.topk}, "
            f"scale={self.scale:.4g}, mask_padded_keys={self.mask_padded_keys}, "
            f"backend={self.backend!r}"
        )

    def forward(self, x: Tensor, ret_attn_mask: bool = False, *, return_attention: bool = False):
        """``[B, dim, H, W]`` -> ``[B, dim, H, W]`` (NCHW); with ``return_attention`` (or
        ``ret_attn_mask``) also the attention weights, see the class notes."""
        check_feature_map(x, self.dim, "NCHW", type(self).__name__)
        want_attn = ret_attn_mask or return_attention
        _, _, h, w = x.shape
        if not self.auto_pad and (h % self.n_win or w % self.n_win):
            raise ValueError(
                f"input size {(h, w)} is not a multiple of n_win={self.n_win} and auto_pad=False; "
                "set auto_pad=True (any size) or resize the input"
            )
        region_size, n_win = region_layout((h, w), self.n_win)
        hp, wp = n_win[0] * region_size[0], n_win[1] * region_size[1]

        qkv = self.qkv_linear(x)  # B, 3C, H, W
        v = qkv[:, 2 * self.dim :]
        if (hp, wp) != (h, w):
            qkv = F.pad(qkv, (0, wp - w, 0, hp - h))  # zero padding after the projection
        q, k, v_pad = qkv.permute(0, 2, 3, 1).split(self.dim, dim=-1)  # NHWC views

        valid = (h, w)
        q_regions = region_mean(q.detach(), n_win, valid=valid, validate=False)  # B, R, C
        k_regions = region_mean(k.detach(), n_win, valid=valid, validate=False)
        topk = min(self.topk, n_win[0] * n_win[1])
        weights, index = topk_routing(q_regions, k_regions, topk=topk, scale=None,
                                      validate=False)
        weights, index, _ = self.routing_tap(weights, index, n_win)

        key_valid = valid if self.mask_padded_keys and (hp, wp) != (h, w) else None
        common = dict(n_win=n_win, num_heads=self.num_heads, scale=self.scale,
                      key_valid=key_valid, validate=False)
        attn = None
        if want_attn:
            out, attn = routed_attention_with_weights(q, k, v_pad, index, **common)
            b, r = x.shape[0], n_win[0] * n_win[1]
            attn = attn.view(b, r, *attn.shape[1:]).transpose(1, 2)
        else:
            out = routed_attention(q, k, v_pad, index, backend=self.backend, **common)
        out = out[:, :h, :w].permute(0, 3, 1, 2)  # NCHW view
        if self.lepe is not None:
            out = out + self.lepe(v)
        out = self.output_linear(out)
        if want_attn:
            return out, attn
        return out
