"""Chunked backend: routed attention in bounded memory.

Query regions (and, when one region is too big, blocks of its query tokens) are processed a
tile at a time: each tile gathers only its own routed keys and runs fused
``scaled_dot_product_attention`` on them (flash kernels on CPU and CUDA: the attention matrix is
never materialised). The backward recomputes each tile under autograd (activation
checkpointing per tile) and accumulates key/value gradients with ``index_put_(accumulate=True)``.
Peak memory is the inputs, the outputs and one tile, whatever the batch, the number of regions
or ``topk``. The tile budget is ``chunk_bytes`` (default 256 MiB, or ``BIFORMER_CHUNK_MB``).
A routing id outside ``[0, R)`` raises (IndexError) instead of reading another image's
regions (``global_ids``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable

from ..arguments import check_int, env_mib
from ..checks import Problem
from ..regions import from_regions, to_regions
from .masking import key_bias

NAME = "chunked"
DEFAULT_CHUNK_BYTES = 256 * 2**20


def can_run(problem: Problem) -> list[str]:
    """The chunked backend runs everywhere PyTorch runs."""
    return []


def default_chunk_bytes() -> int:
    """Tile budget in bytes: ``BIFORMER_CHUNK_MB`` (a finite number of MiB > 0) if set, else
    256 MiB; ``inf``, ``nan``, zero, negative or non-numbers raise a ValueError."""
    return env_mib("BIFORMER_CHUNK_MB", DEFAULT_CHUNK_BYTES, allow_zero=False)


def plan_tiles(
    groups: int, q_tokens: int, keys: int, heads: int, channels: int, budget: int
) -> tuple[int, int]:
    """Choose ``(regions_per_tile, query_tokens_per_tile)`` so one tile fits ``budget`` bytes.

    A tile holds about four ``[regions, heads, tokens, keys]`` fp32 temporaries (scores,
    probabilities, their gradients) plus its gathered keys and values.
    """
    row_bytes = 4 * 4 * heads * keys  # one query token's scores/probabilities/gradients
    kv_bytes = 2 * 4 * keys * channels  # one region's gathered keys and values (+ gradients)
    tokens = q_tokens if row_bytes * q_tokens <= budget else max(1, budget // row_bytes)
    per_region = row_bytes * tokens + kv_bytes
    per_tile = max(1, min(groups, budget // max(per_region, 1)))
    return per_tile, tokens


def _split_heads(x: Tensor, heads: int) -> Tensor:
    """``[G, L, C]`` -> ``[G, heads, L, C // heads]``."""
    g, length, c = x.shape
    return x.view(g, length, heads, c // heads).transpose(1, 2)


def _merge_heads(x: Tensor) -> Tensor:
    """``[G, heads, L, d]`` -> ``[G, L, heads * d]``."""
    g, m, length, d = x.shape
    return x.transpose(1, 2).reshape(g, length, m * d)


class _ChunkedAttention(torch.autograd.Function):
    """Region-major routed attention, tile by tile on fused ``scaled_dot_product_attention``.

    Inputs: ``q`` ``[G, Lq, Cqk]``, ``k`` ``[G, Lk, Cqk]``, ``v`` ``[G, Lk, Cv]`` with
    ``G = B * R`` global regions, ``gidx`` ``[G, topk]`` global key-region ids, optional
    ``weight`` ``[G, topk]`` (soft routing) and ``bias`` ``[R, Lk]`` (masked keys). Nothing but
    the inputs is saved: the backward re-gathers each tile and differentiates its SDPA call.
    """

    @staticmethod
    def forward(ctx, q, k, v, gidx, weight, bias, scale, heads, num_regions, budget):
        g_total, lq, _ = q.shape
        lk = k.shape[1]
        topk = gidx.shape[1]
        keys = topk * lk
        gs, ts = plan_tiles(g_total, lq, keys, heads, q.shape[2] + v.shape[2], budget)
        out = q.new_empty(g_total, lq, v.shape[2])
        for g0 in range(0, g_total, gs):
            g1 = min(g0 + gs, g_total)
            ids = gidx[g0:g1].reshape(-1)
            k_sel, v_sel = _gather(k, v, ids, g1 - g0, keys, weight, g0, g1, heads)
            b_sel = _bias(bias, ids, num_regions, g1 - g0, keys)
            for t0 in range(0, lq, ts):
                t1 = min(t0 + ts, lq)
                qt = _split_heads(q[g0:g1, t0:t1], heads)
                o = F.scaled_dot_product_attention(qt, k_sel, v_sel, attn_mask=b_sel, scale=scale)
                out[g0:g1, t0:t1] = _merge_heads(o)
        ctx.save_for_backward(q, k, v, gidx, weight, bias)
        ctx.plan = (scale, heads, num_regions, gs, ts)
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, dout):
        q, k, v, gidx, weight, bias = ctx.saved_tensors
        scale, heads, num_regions, gs, ts = ctx.plan
        g_total, lq, _ = q.shape
        lk = k.shape[1]
        topk = gidx.shape[1]
        keys = topk * lk
        dq = torch.zeros_like(q)
        dk = torch.zeros_like(k)
        dv = torch.zeros_like(v)
        want_dw = weight is not None and ctx.needs_input_grad[4]
        dw = torch.zeros_like(weight) if want_dw else None
        for g0 in range(0, g_total, gs):
            g1 = min(g0 + gs, g_total)
            g = g1 - g0
            ids = gidx[g0:g1].reshape(-1)
            b_sel = _bias(bias, ids, num_regions, g, keys)
            k_raw = k.index_select(0, ids).view(g, keys, -1).requires_grad_(True)
            v_raw = v.index_select(0, ids).view(g, keys, -1).requires_grad_(True)
            w = weight[g0:g1].detach().requires_grad_(want_dw) if weight is not None else None
            dk_raw = dv_raw = None
            for t0 in range(0, lq, ts):
                t1 = min(t0 + ts, lq)
                qt = q[g0:g1, t0:t1].detach().requires_grad_(True)
                with torch.enable_grad():
                    k_sel, v_sel = k_raw, v_raw
                    if w is not None:
                        ww = _slot_weight(w, lk, k.dtype)
                        k_sel, v_sel = k_sel * ww, v_sel * ww
                    o = F.scaled_dot_product_attention(
                        _split_heads(qt, heads), _split_heads(k_sel, heads),
                        _split_heads(v_sel, heads), attn_mask=b_sel, scale=scale,
                    )
                    leaves = [qt, k_raw, v_raw] + ([w] if want_dw else [])
                    grads = torch.autograd.grad(
                        _merge_heads(o), leaves, dout[g0:g1, t0:t1]
                    )
                dq[g0:g1, t0:t1] = grads[0]
                dk_raw = grads[1] if dk_raw is None else dk_raw + grads[1]
                dv_raw = grads[2] if dv_raw is None else dv_raw + grads[2]
                if want_dw:
                    dw[g0:g1] += grads[3]
            dk.index_put_((ids,), dk_raw.reshape(g * topk, lk, -1), accumulate=True)
            dv.index_put_((ids,), dv_raw.reshape(g * topk, lk, -1), accumulate=True)
        return dq, dk, dv, None, dw, None, None, None, None, None


def _gather(k, v, ids, g, keys, weight, g0, g1, heads):
    """Routed keys and values of ``g`` query regions: ``[g, heads, keys, d]`` each."""
    k_sel = k.index_select(0, ids).view(g, keys, -1)
    v_sel = v.index_select(0, ids).view(g, keys, -1)
    if weight is not None:
        w = _slot_weight(weight[g0:g1], k.shape[1], k.dtype)
        k_sel, v_sel = k_sel * w, v_sel * w
    return _split_heads(k_sel, heads), _split_heads(v_sel, heads)


def _slot_weight(weight, lk, dtype):
    """Soft-routing weight ``[g, topk]`` spread over every gathered key: ``[g, topk*lk, 1]``."""
    return weight.to(dtype).repeat_interleave(lk, dim=1)[:, :, None]


def _bias(bias, ids, num_regions, g, keys):
    """Key-mask bias of the gathered keys, ``[g, 1, 1, keys]``, or None."""
    if bias is None:
        return None
    return bias[ids % num_regions].view(g, 1, 1, keys)


def global_ids(index: Tensor, num_regions: int) -> Tensor:
    """Routing ids ``[B, R, topk]`` -> ids into the flattened ``[B * R]`` regions, ``[B*R, topk]``.

    An id outside ``[0, R)`` would name another image's region; it becomes ``B * R``, past the
    end, so the gather refuses it (IndexError) instead of reading another batch element.
    """
    b = index.shape[0]
    index = index.long()
    offsets = torch.arange(b, device=index.device).view(b, 1, 1) * num_regions
    inside = (index >= 0) & (index < num_regions)
    return torch.where(inside, index + offsets, b * num_regions).reshape(b * num_regions, -1)


def routed_attention(
    query: Tensor,
    key: Tensor,
    value: Tensor,
    index: Tensor,
    weight: Tensor | None,
    *,
    n_win: tuple[int, int],
    num_heads: int,
    scale: float,
    key_valid: tuple[int, int] | None = None,
    chunk_bytes: int | None = None,
) -> Tensor:
    """Routed attention in bounded memory, NHWC in and out; see ``biformer.ops.routed_attention``."""
    b, hq, wq, _ = query.shape
    r = n_win[0] * n_win[1]
    q = to_regions(query, n_win).reshape(b * r, -1, query.shape[-1])
    k = to_regions(key, n_win).reshape(b * r, -1, key.shape[-1])
    v = to_regions(value, n_win).reshape(b * r, -1, value.shape[-1])
    gidx = global_ids(index, r)
    bias = None
    if key_valid is not None:
        bias = key_bias(key.shape[1:3], key_valid, n_win, query.dtype, query.device)
    budget = default_chunk_bytes() if chunk_bytes is None else check_int(chunk_bytes, "chunk_bytes")
    if weight is not None:
        weight = weight.reshape(b * r, -1)
    out = _ChunkedAttention.apply(q, k, v, gidx, weight, bias, float(scale), num_heads, r, budget)
    return from_regions(out.view(b, r, -1, value.shape[-1]), n_win, (hq, wq))

