"""The residual block every BiFormer family builds on, and each stage's attention choice.

A stage's attention is either a positive int (Bi-Level Routing Attention with that many routed
regions) or a named global attention: ``"global"`` (plain multi-head attention) or
``"global_lepe"`` (with LePE, the official last stage). The official configs write these as
``topk`` -1 and -2 (with other meanings in the NHWC and the NCHW models); ``stage_attention``
turns those codes into the names, so the official configs still build the same models.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from contextlib import nullcontext
from functools import partial
from typing import Any

import torch
from timm.layers import DropPath, get_act_layer, get_norm_layer, register_notrace_module
from torch import Tensor, nn

from ..layers import Attention, AttentionLePE, AttentionLePE2d, BiLevelRoutingAttention, BRA2d

__all__ = [
    "GLOBAL",
    "GLOBAL_LEPE",
    "NHWC_CODES",
    "NHWC_NORM",
    "ResidualBlock",
    "build_on",
    "make_drop_path",
    "nhwc_attention",
    "resolve_act",
    "resolve_norm",
    "stage_attention",
]

GLOBAL = "global"  # global multi-head attention (official topk -1 in the NHWC models)
GLOBAL_LEPE = "global_lepe"  # global attention with LePE (official topk -2, the last stage)
NHWC_CODES: Mapping[int, str] = {-1: GLOBAL, -2: GLOBAL_LEPE}
NHWC_NORM = partial(nn.LayerNorm, eps=1e-6)

# torch.fx (timm's feature_cls="fx", torchvision's feature extraction) calls the attention layers
# as opaque modules: their input checks and size-dependent padding need real tensors.
for _layer in (BiLevelRoutingAttention, BRA2d, Attention, AttentionLePE, AttentionLePE2d):
    register_notrace_module(_layer)


def stage_attention(topk: int | str, codes: Mapping[int, str],
                    choices: Sequence[str] = (GLOBAL, GLOBAL_LEPE)) -> int | str:
    """A stage's attention: routed regions (``topk > 0``) or one of ``choices``.

    ``codes`` maps the official negative ``topk`` values to names.
    """
    if isinstance(topk, int) and not isinstance(topk, bool):
        topk = codes.get(topk, topk)
    if (isinstance(topk, int) and topk > 0) or topk in choices:
        return topk
    official = ", ".join(f"{code} ({name})" for code, name in codes.items())
    raise ValueError(
        f"topk={topk!r} is not supported: use a positive number of routed regions or one of "
        f"{tuple(choices)} (official codes: {official})"
    )


def make_drop_path(rate: float) -> nn.Module:
    return DropPath(rate) if rate > 0.0 else nn.Identity()


def resolve_norm(norm_layer: Any, default: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    """A norm layer from a timm name (``"layernorm"``), a class or a partial; None: ``default``."""
    return get_norm_layer(norm_layer) if norm_layer is not None else default


def resolve_act(act_layer: Any) -> Callable[..., nn.Module]:
    """An activation from a timm name (``"gelu"``), a class or a partial; None: ``nn.GELU``."""
    return get_act_layer(act_layer) if act_layer is not None else nn.GELU


def build_on(device: Any, dtype: torch.dtype | None, build: Callable[..., nn.Module],
             *args: Any, **kwargs: Any) -> nn.Module:
    """``build(*args, **kwargs)`` with its parameters created on ``device`` in ``dtype``
    (for the attention layers, whose constructors take no factory arguments)."""
    with torch.device(device) if device is not None else nullcontext():
        module = build(*args, **kwargs)
    return module.to(dtype=dtype) if dtype is not None else module


def nhwc_attention(dim: int, *, topk: int | str, n_win: int, head_dim: int, side_dwconv: int,
                   auto_pad: bool) -> nn.Module:
    """The token mixer of one NHWC block, ``[B, H, W, dim]`` in and out.

    ``topk``: routed regions (Bi-Level Routing Attention, ``dim // head_dim`` heads,
    ``n_win x n_win`` regions), ``"global"`` or ``"global_lepe"`` (8 heads).
    """
    attention = stage_attention(topk, NHWC_CODES)
    if attention == GLOBAL:
        return Attention(dim)
    if attention == GLOBAL_LEPE:
        return AttentionLePE(dim, side_dwconv=side_dwconv)
    return BiLevelRoutingAttention(
        dim, num_heads=dim // head_dim, n_win=n_win, qk_dim=dim, qk_scale=None, kv_per_win=-1,
        kv_downsample_ratio=4, kv_downsample_mode="identity", topk=attention,
        param_attention="qkvo", side_dwconv=side_dwconv, auto_pad=auto_pad,
    )


class ResidualBlock(nn.Module):
    """``x + drop_path(attn(norm1(x)))``, then ``x + drop_path(mlp(norm2(x)))``.

    NHWC ``[B, H, W, dim]`` in and out as defined here (``nhwc_attention``, a two-linear MLP);
    a subclass changes the layout by overriding ``make_attention``, ``make_mlp`` and
    ``default_norm``. Parameter names ``norm1``, ``attn``, ``norm2``, ``mlp`` as officially.

    Args:
        dim: channels.
        topk: the attention (see ``stage_attention``).
        n_win: regions per side of a routed attention.
        mlp_ratio: MLP hidden width / dim.
        head_dim: channels per head of a routed attention.
        side_dwconv: LePE kernel size.
        drop_path: stochastic depth of both residual branches.
        auto_pad: pad maps that are not multiples of ``n_win``.
        norm_layer, act_layer: norm and MLP activation (None: the official ones).
        device, dtype: factory arguments of the parameters.
    """

    default_norm: Callable[..., nn.Module] = NHWC_NORM

    def __init__(self, dim: int, *, topk: int | str, n_win: int, mlp_ratio: float = 4.0,
                 head_dim: int = 32, side_dwconv: int = 5, drop_path: float = 0.0,
                 auto_pad: bool = True, norm_layer: Any = None, act_layer: Any = None,
                 device: Any = None, dtype: torch.dtype | None = None):
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        norm_layer = resolve_norm(norm_layer, self.default_norm)
        self.norm1 = norm_layer(dim, **dd)
        self.attn = build_on(device, dtype, self.make_attention, dim, topk=topk, n_win=n_win,
                             head_dim=head_dim, side_dwconv=side_dwconv, auto_pad=auto_pad)
        self.norm2 = norm_layer(dim, **dd)
        self.mlp = self.make_mlp(dim, int(mlp_ratio * dim), resolve_act(act_layer), **dd)
        self.drop_path = make_drop_path(drop_path)

    make_attention = staticmethod(nhwc_attention)

    @staticmethod
    def make_mlp(dim: int, hidden: int, act_layer: Callable[..., nn.Module],
                 **dd: Any) -> nn.Module:
        """``[..., dim]`` -> ``[..., dim]`` through ``hidden`` channels."""
        return nn.Sequential(nn.Linear(dim, hidden, **dd), act_layer(),
                             nn.Linear(hidden, dim, **dd))

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x)))
        x = x + self.drop_path(self.mlp(self.norm2(x)))
        return x
