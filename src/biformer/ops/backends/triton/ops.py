"""Autograd around the kernels: a plain ``autograd.Function`` in eager mode, ``torch.library``
custom ops for ``torch.compile``.

Eager calls go through ``RoutedAttention.apply`` (one Python -> C++ -> Python hop; the custom-op
dispatcher costs about as much again as the whole host side of a call). While
``torch.compile`` traces, the same work is reached through ``biformer::routed_attention_fwd`` /
``biformer::routed_attention_bwd``: custom ops with fake implementations, a registered autograd
formula (the log-sum-exp output is not differentiable) and an autocast rule (floating q, k, v
are cast to the autocast dtype of their device; the routing weight is read as it is), so
``fullgraph=True`` sees one opaque op. Both share ``launch.forward`` / ``launch.backward`` and
the cached ``LaunchPlan``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from .plan import LaunchPlan, get_plan
from .tiles import TileConfig

__all__ = ["CallArgs", "RoutedAttention", "autocast_inputs", "forward_only", "plan_for"]


@dataclass(frozen=True)
class CallArgs:
    """The non-tensor arguments of a call."""

    n_win: tuple[int, int]
    num_heads: int
    scale: float
    key_valid: tuple[int, int] | None = None
    packed: tuple[int, int, int] | None = None  # channel split when q|k|v is one buffer
    config: TileConfig | None = None


_modules: dict = {}


def _launch():
    """The ``launch`` module (imports Triton), loaded on first use."""
    module = _modules.get("launch")
    if module is None:
        from . import launch as module

        _modules["launch"] = module
    return module


def split_packed(first: Tensor, key: Tensor | None, value: Tensor | None, packed):
    """``(query, key, value)`` views: of ``first`` when packed, else the tensors as given."""
    if packed is None:
        return first, key, value
    cqk = packed[0]
    return first.narrow(-1, 0, cqk), first.narrow(-1, cqk, cqk), first.narrow(-1, 2 * cqk,
                                                                               packed[2])


def plan_for(query: Tensor, key: Tensor, value: Tensor, index: Tensor, soft: bool,
             args: CallArgs) -> LaunchPlan:
    """The cached plan of a call."""
    return get_plan(query, key, value, index.shape[-1], soft=soft, n_win=args.n_win,
                    heads=args.num_heads, scale=args.scale, key_valid=args.key_valid,
                    packed=args.packed, config=args.config)


def autocast_inputs(device_type: str, *tensors: Tensor) -> tuple[Tensor, ...]:
    """The autocast rule: under autocast, floating tensors cast to the autocast dtype."""
    if not torch.is_autocast_enabled(device_type):
        return tensors
    dtype = torch.get_autocast_dtype(device_type)
    return tuple(t.to(dtype) if t.is_floating_point() else t for t in tensors)


def forward_only(query: Tensor, key: Tensor, value: Tensor, index: Tensor, weight: Tensor | None,
                 args: CallArgs) -> Tensor:
    """The forward without autograd (inference): the output only."""
    plan = plan_for(query, key, value, index, weight is not None, args)
    return _launch().forward(plan, query, key, value, index, weight)[0]


class RoutedAttention(torch.autograd.Function):
    """Eager autograd: ``apply(first, key, value, index32, weight, args) -> out``; with
    ``args.packed`` ``first`` is the whole ``[B, H, W, 2*Cqk + Cv]`` q|k|v buffer (key and
    value None) and its gradient is written as one buffer (no ``cat``)."""

    @staticmethod
    def forward(ctx, first, key, value, index, weight, args: CallArgs):
        q, k, v = split_packed(first, key, value, args.packed)
        plan = plan_for(q, k, v, index, weight is not None, args)
        out, lse = _launch().forward(plan, q, k, v, index, weight)
        ctx.save_for_backward(q, k, v, index, weight, out, lse)
        ctx.plan = plan
        return out

    @staticmethod
    def backward(ctx, grad_out):
        q, k, v, index, weight, out, lse = ctx.saved_tensors
        weight_grad = weight is not None and ctx.needs_input_grad[4]
        dq, dk, dv, dw = _launch().backward(ctx.plan, grad_out, q, k, v, index, weight, out, lse,
                                            weight_grad)
        return dq, dk, dv, None, dw, None


# ----------------------------------------------------------------------------------------------
# custom ops (torch.compile)


def _args(n_win, num_heads, scale, key_valid) -> CallArgs:
    valid = None if key_valid is None else (int(key_valid[0]), int(key_valid[1]))
    return CallArgs((int(n_win[0]), int(n_win[1])), int(num_heads), float(scale), valid)


@torch.library.custom_op("biformer::routed_attention_fwd", mutates_args=())
def routed_attention_fwd(query: Tensor, key: Tensor, value: Tensor, index: Tensor,
                         weight: Tensor | None, n_win: list[int], num_heads: int, scale: float,
                         key_valid: list[int] | None) -> tuple[Tensor, Tensor]:
    """Fused forward: ``(out [B, Hq, Wq, Cv], lse [B*R, heads, Lq] fp32)``; int32 ``index``."""
    plan = plan_for(query, key, value, index, weight is not None,
                    _args(n_win, num_heads, scale, key_valid))
    return _launch().forward(plan, query, key, value, index, weight)


@routed_attention_fwd.register_fake
def _fwd_fake(query, key, value, index, weight, n_win, num_heads, scale, key_valid):
    b, hq, wq, _ = query.shape
    r = n_win[0] * n_win[1]
    lq = (hq // n_win[0]) * (wq // n_win[1])
    out = query.new_empty(b, hq, wq, value.shape[-1])
    return out, query.new_empty(b * r, num_heads, lq, dtype=torch.float32)


@torch.library.custom_op("biformer::routed_attention_bwd", mutates_args=())
def routed_attention_bwd(grad_out: Tensor, query: Tensor, key: Tensor, value: Tensor,
                         index: Tensor, weight: Tensor | None, out: Tensor, lse: Tensor,
                         n_win: list[int], num_heads: int, scale: float,
                         key_valid: list[int] | None,
                         weight_grad: bool) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Fused backward: ``(dq, dk, dv, dw)``; ``dw`` is empty unless ``weight_grad``."""
    plan = plan_for(query, key, value, index, weight is not None,
                    _args(n_win, num_heads, scale, key_valid))
    dq, dk, dv, dw = _launch().backward(plan, grad_out, query, key, value, index, weight, out,
                                        lse, weight_grad)
    return dq, dk, dv, query.new_empty(0) if dw is None else dw


@routed_attention_bwd.register_fake
def _bwd_fake(grad_out, query, key, value, index, weight, out, lse, n_win, num_heads, scale,
              key_valid, weight_grad):
    dw = weight.new_empty(index.shape) if weight is not None and weight_grad else \
        query.new_empty(0)
    return (query.new_empty(query.shape), key.new_empty(key.shape),
            value.new_empty(value.shape), dw)


def _setup_context(ctx, inputs, output):
    query, key, value, index, weight, n_win, num_heads, scale, key_valid = inputs
    out, lse = output
    ctx.mark_non_differentiable(lse)
    ctx.save_for_backward(query, key, value, index, weight, out, lse)
    ctx.args = (n_win, num_heads, scale, key_valid)


def _backward(ctx, grad_out, _grad_lse):
    query, key, value, index, weight, out, lse = ctx.saved_tensors
    weight_grad = weight is not None and ctx.needs_input_grad[4]
    dq, dk, dv, dw = routed_attention_bwd(grad_out, query, key, value, index, weight, out, lse,
                                          *ctx.args, weight_grad)
    return dq, dk, dv, None, dw if weight_grad else None, None, None, None, None


routed_attention_fwd.register_autograd(_backward, setup_context=_setup_context)

_LIB = torch.library.Library("biformer", "FRAGMENT")


def _register_autocast(device_type: str) -> None:
    """Autocast rule of the forward op on ``device_type`` (see ``autocast_inputs``)."""
    key = "Autocast" + torch._C._dispatch_key_for_device(device_type)
    excluded = torch._C.DispatchKeySet(getattr(torch._C.DispatchKey, key))

    def kernel(_keyset, query, key_, value, *rest):
        q, k, v = autocast_inputs(device_type, query, key_, value)  # autocast is off inside
        with torch._C._ExcludeDispatchKeyGuard(excluded):
            return torch.ops.biformer.routed_attention_fwd.default(q, k, v, *rest)

    _LIB.impl("routed_attention_fwd", kernel, key, with_keyset=True)


for _device in ("cuda", "cpu"):
    _register_autocast(_device)
