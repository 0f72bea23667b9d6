"""Triton backend: fused gather + attention kernels, forward and backward.

The kernels read queries, keys and values from NHWC tensors by address arithmetic and never
materialise the gathered keys/values or the attention matrix. The backward pass is
FlashAttention-2 style: a dQ kernel over query regions (which also stores
``delta = rowsum(O * dO)``) and a balanced dK/dV kernel over key regions that walks the
transposed routing in fixed chunks, so every gradient element is written exactly once: no
atomics, bit-identical reruns. Routed ids outside ``[0, R)`` read nothing (masked keys).

Supported: float32, float16, bfloat16; any region size; head dims up to 256; query and key widths
different from the value width; per-region KV downsampling; soft routing (topk up to 128);
masked padded keys (``key_valid``; a query whose every routed key is masked gets zeros).

Modules: ``support`` (``can_run``), ``kernel_*`` (the Triton kernels), ``tiles`` /
``tile_table`` (tile choice), ``plan`` (cached launch plans), ``launch`` (running a plan),
``ops`` (autograd and custom ops), ``aot`` (ahead-of-time compile spec), ``autotune``.

On CPU the kernels only run in the Triton interpreter (``TRITON_INTERPRET=1`` set before Triton
is imported), which the tests use; otherwise this backend refuses CPU tensors.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .support import can_run, has_triton
from .tiles import TileConfig, use_tiles

__all__ = ["NAME", "TileConfig", "can_run", "packed_view", "routed_attention", "use_tiles"]

NAME = "triton"

if has_triton():  # registers the custom ops (without importing triton itself)
    from . import ops as _ops


def packed_view(query: Tensor, key: Tensor, value: Tensor) -> Tensor | None:
    """The ``[B, H, W, 2*Cqk + Cv]`` NHWC view that ``query``, ``key`` and ``value`` are
    consecutive channel slices of (one projection, NHWC or NCHW), or None."""
    base = query._base
    if base is None or key._base is not base or value._base is not base or base.dim() != 4:
        return None
    view = base if tuple(base.shape[:3]) == tuple(query.shape[:3]) else base.permute(0, 2, 3, 1)
    cqk, cv = query.shape[-1], value.shape[-1]
    if tuple(view.shape) != (*query.shape[:3], 2 * cqk + cv):
        return None
    stride, step = view.stride(), view.stride(3)
    start = view.storage_offset()
    layout = ((query, start), (key, start + cqk * step), (value, start + 2 * cqk * step))
    if any(t.stride() != stride or t.storage_offset() != at for t, at in layout):
        return None
    return view


def _nhwc(t: Tensor) -> Tensor:
    """Channel-contiguous (vectorised 16-bit loads): NHWC views of NCHW tensors are copied."""
    return t if t.stride(-1) == 1 else t.contiguous()


def routed_attention(query: Tensor, key: Tensor, value: Tensor, index: Tensor,
                     weight: Tensor | None, *, n_win: tuple[int, int], num_heads: int,
                     scale: float, key_valid: tuple[int, int] | None = None,
                     config: TileConfig | None = None) -> Tensor:
    """Routed attention with the fused kernels, NHWC in and out (no argument checks).

    ``query [B, Hq, Wq, Cqk]``, ``key [B, Hk, Wk, Cqk]``, ``value [B, Hk, Wk, Cv]`` may be strided
    views (slices of one projection are read in place and get one packed gradient);
    ``index``/``weight`` ``[B, R, topk]`` (``index`` int32 or int64); ``n_win`` ``(Rh, Rw)``
    regions per side; ``config`` overrides the tiles (eager calls; under ``torch.compile`` use
    ``use_tiles``). Returns ``[B, Hq, Wq, Cv]`` NHWC contiguous; see
    ``biformer.ops.routed_attention``.
    """
    query, key, value = _ops.autocast_inputs(query.device.type, query, key, value)
    index = index.to(torch.int32, memory_format=torch.contiguous_format)
    if weight is not None:
        weight = weight.contiguous()
    n_win = (int(n_win[0]), int(n_win[1]))
    valid = None if key_valid is None else (int(key_valid[0]), int(key_valid[1]))
    if torch.compiler.is_compiling():
        out, _ = torch.ops.biformer.routed_attention_fwd(
            _nhwc(query), _nhwc(key), _nhwc(value), index, weight, list(n_win), int(num_heads),
            float(scale), None if valid is None else list(valid))
        return out
    needs_grad = torch.is_grad_enabled() and (
        query.requires_grad or key.requires_grad or value.requires_grad
        or (weight is not None and weight.requires_grad))
    view = packed_view(query, key, value) if needs_grad else None
    packed = None if view is None else (query.shape[-1], query.shape[-1], value.shape[-1])
    args = _ops.CallArgs(n_win, int(num_heads), float(scale), valid, packed, config)
    if view is not None:  # one q|k|v buffer: its gradient written whole (no cat)
        return _ops.RoutedAttention.apply(_nhwc(view), None, None, index, weight, args)
    q, k, v = _nhwc(query), _nhwc(key), _nhwc(value)
    if not needs_grad:
        return _ops.forward_only(q, k, v, index, weight, args)
    return _ops.RoutedAttention.apply(q, k, v, index, weight, args)
