"""Bi-Level Routing Attention, the legacy (NHWC) module of the official BiFormer models.

Drop-in replacement for the official ``BiLevelRoutingAttention``: same constructor arguments and
defaults, same parameter names (``qkv.qkv``, ``wo``, ``lepe``, ``router.emb``), NHWC input and
output, same numbers. The routed attention itself runs on a selectable backend
(``biformer.ops``), so large inputs no longer need the official ``topk``-fold K/V copy.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..ops import region_mean, routed_attention, routed_attention_with_weights, topk_routing
from .checks import check_backend, check_bra_options, check_feature_map, check_heads
from .kv_downsample import downsample_regions, make_kv_downsample
from .lepe import make_lepe
from .taps import RoutingTap

__all__ = ["BiLevelRoutingAttention", "QKVLinear", "TopkRouter"]


class QKVLinear(nn.Module):
    """Joint projection to queries (``qk_dim``), keys (``qk_dim``) and values (``dim``)."""

    def __init__(self, dim: int, qk_dim: int, bias: bool = True):
        super().__init__()
        self.dim = dim
        self.qk_dim = qk_dim
        self.qkv = nn.Linear(dim, qk_dim + qk_dim + dim, bias=bias)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``[..., dim]`` -> ``(q [..., qk_dim], k [..., qk_dim], v [..., dim])`` (views)."""
        return self.qkv(x).split([self.qk_dim, self.qk_dim, self.dim], dim=-1)


class TopkRouter(nn.Module):
    """Region routing with an optional learnable embedding (``param_routing``)."""

    def __init__(
        self,
        qk_dim: int,
        topk: int,
        scale: float,
        param_routing: bool = False,
        diff_routing: bool = False,
    ):
        super().__init__()
        self.topk = topk
        self.scale = scale
        self.diff_routing = diff_routing
        self.emb = nn.Linear(qk_dim, qk_dim) if param_routing else nn.Identity()

    def forward(self, query: Tensor, key: Tensor) -> tuple[Tensor, Tensor]:
        """``[B, R, C]`` region queries/keys -> ``(weights, index)``, both ``[B, R, topk]``."""
        if not self.diff_routing:
            query, key = query.detach(), key.detach()
        return topk_routing(self.emb(query), self.emb(key), topk=self.topk, scale=self.scale,
                            validate=False)


class BiLevelRoutingAttention(nn.Module):
    """Bi-Level Routing Attention on NHWC feature maps.

    Args:
        dim: input/output channels (and value width).
        num_heads: attention heads; must divide ``dim`` and ``qk_dim``.
        n_win: regions per side; the map is split into ``n_win x n_win`` regions.
        qk_dim: query/key width (default ``dim``).
        qk_scale: softmax temperature (default ``qk_dim ** -0.5``, the official convention).
        kv_per_win: keys/values per region side for the ``ada_*pool`` modes.
        kv_downsample_ratio: pooling ratio for ``avgpool``/``maxpool``.
        kv_downsample_kernel: accepted for compatibility, unused (as in the reference).
        kv_downsample_mode: ``identity``, ``avgpool``, ``maxpool``, ``ada_avgpool``,
            ``ada_maxpool``.
        topk: key regions routed to each query region, ``1 <= topk <= n_win**2``.
        param_attention: ``"qkvo"`` (with output projection ``wo``) or ``"qkv"`` (without).
        param_routing: learnable linear embedding before routing (needs ``diff_routing``).
        diff_routing: gradients flow into the routing (needs ``soft_routing``: the reference
            never implemented hard differentiable routing).
        soft_routing: multiply gathered keys and values by the routing weights.
        side_dwconv: kernel of the LePE depthwise conv on values (0 disables it).
        auto_pad: zero-pad inputs to a multiple of ``n_win`` before the projection, crop after.
        backend: this layer's routed-attention backend (``"reference"``, ``"chunked"``, ...);
            None (default) follows ``biformer.ops.use_backend`` and the process default. Also
            settable later as the ``backend`` attribute; see ``biformer.ops.dispatch``.

    Shape:
        ``forward(x)``: ``x`` ``[B, H, W, dim]`` (NHWC) -> ``[B, H, W, dim]``.
        ``forward(x, return_attention=True)`` (or its official name ``ret_attn_mask=True``) ->
        ``(out, weights [B, R, topk], index [B, R, topk], attn [B*R, heads, Lq, topk*Lk])``:
        the routing and the attention weights (softmax probabilities, not a mask), computed on
        the reference backend.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int = 8,
        n_win: int = 7,
        qk_dim: int | None = None,
        qk_scale: float | None = None,
        kv_per_win: int | None = 4,
        kv_downsample_ratio: int | None = 4,
        kv_downsample_kernel: int | None = None,
        kv_downsample_mode: str = "identity",
        topk: int = 4,
        param_attention: str = "qkvo",
        param_routing: bool = False,
        diff_routing: bool = False,
        soft_routing: bool = False,
        side_dwconv: int = 3,
        auto_pad: bool = False,
        *,
        backend: str | None = None,
    ):
        super().__init__()
        self.qk_dim = dim if qk_dim is None else qk_dim
        check_bra_options(dim, num_heads, n_win, topk, side_dwconv)
        check_heads(self.qk_dim, num_heads, "qk_dim")
        if param_routing and not diff_routing:
            raise ValueError(
                "param_routing=True needs diff_routing=True: the routing embedding only learns "
                "if gradients reach it"
            )
        if diff_routing and not soft_routing:
            raise ValueError(
                "diff_routing=True with soft_routing=False asks for hard differentiable routing, "
                "which the reference never implemented; set soft_routing=True"
            )
        if param_attention not in ("qkvo", "qkv"):
            raise ValueError(f"param_attention must be 'qkvo' or 'qkv', got {param_attention!r}")
        self.dim = dim
        self.n_win = n_win
        self.num_heads = num_heads
        self.scale = qk_scale or self.qk_dim**-0.5
        self.topk = topk
        self.param_routing = param_routing
        self.diff_routing = diff_routing
        self.soft_routing = soft_routing
        self.param_attention = param_attention
        self.kv_downsample_mode = kv_downsample_mode
        self.kv_per_win = kv_per_win
        self.kv_downsample_ratio = kv_downsample_ratio
        self.kv_downsample_kernel = kv_downsample_kernel
        self.auto_pad = auto_pad
        self.backend = check_backend(backend)

        self.lepe = make_lepe(dim, side_dwconv)
        self.router = TopkRouter(
            self.qk_dim, topk, self.scale, param_routing=param_routing, diff_routing=diff_routing
        )
        self.qkv = QKVLinear(dim, self.qk_dim)
        self.wo = nn.Linear(dim, dim) if param_attention == "qkvo" else nn.Identity()
        self.kv_down = make_kv_downsample(kv_downsample_mode, kv_per_win, kv_downsample_ratio)
        self.routing_tap = RoutingTap()

    def extra_repr(self) -> str:
        return (
            f"dim={self.dim}, num_heads={self.num_heads}, n_win={self.n_win}, topk={self.topk}, "
            f"qk_dim={self.qk_dim}, scale={self.scale:.4g}, kv_downsample_mode="
            f"{self.kv_downsample_mode!r}, soft_routing={self.soft_routing}, "
            f"auto_pad={self.auto_pad}, backend={self.backend!r}"
        )

    def forward(self, x: Tensor, ret_attn_mask: bool = False, *, return_attention: bool = False):
        """``[B, H, W, dim]`` -> ``[B, H, W, dim]`` (NHWC); see the class notes for the
        ``return_attention`` (``ret_attn_mask``) tuple."""
        check_feature_map(x, self.dim, "NHWC", type(self).__name__)
        want_attn = ret_attn_mask or return_attention
        n, h_in, w_in, _ = x.shape
        win = self.n_win
        pad_b, pad_r = (-h_in) % win, (-w_in) % win
        if pad_b or pad_r:
            if not self.auto_pad:
                raise ValueError(
                    f"input size {(h_in, w_in)} is not a multiple of n_win={win}; pass "
                    "auto_pad=True to pad it, or resize the input"
                )
            x = F.pad(x, (0, 0, 0, pad_r, 0, pad_b))  # zeros before the projection (official)
        _, h, w, _ = x.shape
        n_win = (win, win)

        q, k, v = self.qkv(x)  # B, H, W, C each (views of one projection)
        q_regions = region_mean(q, n_win, validate=False)  # B, R, qk_dim
        k_regions = region_mean(k, n_win, validate=False)
        weights, index = self.router(q_regions, k_regions)
        weights, index, _ = self.routing_tap(weights, index, n_win)

        if not isinstance(self.kv_down, nn.Identity):
            kv = downsample_regions(torch.cat([k, v], dim=-1), n_win, self.kv_down)
            k_att, v_att = kv.split([self.qk_dim, self.dim], dim=-1)
        else:
            k_att, v_att = k, v

        soft = weights if self.soft_routing else None
        attn = None
        common = dict(n_win=n_win, num_heads=self.num_heads, scale=self.scale, weight=soft,
                      validate=False)
        if n == 0:
            out = x.new_zeros(0, h, w, self.dim)
        elif want_attn:
            out, attn = routed_attention_with_weights(q, k_att, v_att, index, **common)
        else:
            out = routed_attention(q, k_att, v_att, index, backend=self.backend, **common)
        if self.lepe is not None:
            out = out + self.lepe(v.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        out = self.wo(out)
        if pad_b or pad_r:
            out = out[:, :h_in, :w_in, :].contiguous()
        if want_attn:
            return out, weights, index, attn
        return out
