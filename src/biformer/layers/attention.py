"""Global multi-head attention layers (stage 4 of BiFormer), NHWC and NCHW forms."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from .checks import check_feature_map, check_heads, check_side_dwconv
from .lepe import make_lepe

__all__ = ["Attention", "AttentionLePE", "AttentionLePE2d"]


class Attention(nn.Module):
    """Plain global multi-head self-attention on NHWC maps (official ``Attention``).

    Parameters ``qkv`` (no bias by default) and ``proj``; scale ``head_dim ** -0.5``.
    Shape: ``[B, H, W, dim]`` -> ``[B, H, W, dim]``.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int = 8,
        qkv_bias: bool = False,
        qk_scale: float | None = None,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
    ):
        super().__init__()
        check_heads(dim, num_heads, "dim")
        self.dim = dim
        self.num_heads = num_heads
        self.scale = qk_scale or (dim // num_heads) ** -0.5
        self.attn_drop = attn_drop
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def _attend(self, x: Tensor) -> Tensor:
        """``[B, N, C]`` tokens -> attention output ``[B, N, C]`` (before the projection)."""
        b, n, c = x.shape
        m = self.num_heads
        q, k, v = self.qkv(x).reshape(b, n, 3, m, c // m).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(
            q, k, v, dropout_p=self.attn_drop if self.training else 0.0, scale=self.scale
        )
        return out.transpose(1, 2).reshape(b, n, c)

    def forward(self, x: Tensor) -> Tensor:
        check_feature_map(x, self.dim, "NHWC", type(self).__name__)
        b, h, w, c = x.shape
        out = self.proj_drop(self.proj(self._attend(x.reshape(b, h * w, c))))
        return out.reshape(b, h, w, c)


class AttentionLePE(Attention):
    """Global attention plus a depthwise-conv positional term (official ``AttentionLePE``).

    As in the official code, the LePE conv runs on the layer's *input* (not on the values) and
    is added before the output projection. Shape: ``[B, H, W, dim]`` -> ``[B, H, W, dim]``.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int = 8,
        qkv_bias: bool = False,
        qk_scale: float | None = None,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
        side_dwconv: int = 5,
    ):
        super().__init__(dim, num_heads, qkv_bias, qk_scale, attn_drop, proj_drop)
        self.lepe = make_lepe(dim, check_side_dwconv(side_dwconv))

    def forward(self, x: Tensor) -> Tensor:
        check_feature_map(x, self.dim, "NHWC", type(self).__name__)
        b, h, w, c = x.shape
        out = self._attend(x.reshape(b, h * w, c)).reshape(b, h, w, c)
        if self.lepe is not None:
            out = out + self.lepe(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        return self.proj_drop(self.proj(out))


class AttentionLePE2d(nn.Module):
    """Global attention with LePE on NCHW maps (official ``nchwAttentionLePE``).

    1x1-conv projections ``qkv`` (no bias by default) and ``proj``; LePE on the values.
    Shape: ``[B, dim, H, W]`` -> ``[B, dim, H, W]``.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int = 8,
        qkv_bias: bool = False,
        qk_scale: float | None = None,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
        side_dwconv: int = 5,
    ):
        super().__init__()
        check_heads(dim, num_heads, "dim")
        self.dim = dim
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = qk_scale or self.head_dim**-0.5
        self.attn_drop = attn_drop
        self.qkv = nn.Conv2d(dim, dim * 3, kernel_size=1, bias=qkv_bias)
        self.proj = nn.Conv2d(dim, dim, kernel_size=1)
        self.proj_drop = nn.Dropout(proj_drop)
        self.lepe = make_lepe(dim, check_side_dwconv(side_dwconv))

    def forward(self, x: Tensor) -> Tensor:
        check_feature_map(x, self.dim, "NCHW", type(self).__name__)
        b, c, h, w = x.shape
        m, d = self.num_heads, self.head_dim
        q, k, v = self.qkv(x).chunk(3, dim=1)  # B, C, H, W each
        out = F.scaled_dot_product_attention(
            q.reshape(b, m, d, h * w).transpose(-1, -2),
            k.reshape(b, m, d, h * w).transpose(-1, -2),
            v.reshape(b, m, d, h * w).transpose(-1, -2),
            dropout_p=self.attn_drop if self.training else 0.0,
            scale=self.scale,
        )  # B, m, HW, d
        out = out.transpose(-1, -2).reshape(b, c, h, w)
        if self.lepe is not None:
            out = out + self.lepe(v)
        return self.proj_drop(self.proj(out))
