"""Chunked backend: routed attention in bounded memory.

Query regions (and, when one region is too big, blocks of its query tokens) are processed a
tile at a time: each tile gathers only its own routed keys, computes its attention and writes its
output. A hand-written backward recomputes each tile's attention from the saved log-sum-exp
(as FlashAttention does) and scatters key/value gradients with ``index_add_``. Peak memory is the
inputs, the outputs and one tile, whatever the batch, the number of regions or ``topk``.
The tile budget is ``chunk_bytes`` (default 256 MiB, or ``BIFORMER_CHUNK_MB``).
"""

from __future__ import annotations

import math
import os

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from ..checks import Problem
from ..regions import from_regions, to_regions
from .masking import key_bias

NAME = "chunked"
DEFAULT_CHUNK_BYTES = 256 * 2**20


def can_run(problem: Problem) -> list[str]:
    """The chunked backend runs everywhere PyTorch runs."""
    return []


def default_chunk_bytes() -> int:
    """Tile budget in bytes: ``BIFORMER_CHUNK_MB`` if set, else 256 MiB."""
    env = os.environ.get("BIFORMER_CHUNK_MB")
    if env:
        try:
            return max(1, int(float(env) * 2**20))
        except ValueError as err:
            raise ValueError(f"BIFORMER_CHUNK_MB must be a number of MiB, got {env!r}") from err
    return DEFAULT_CHUNK_BYTES


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
    regions = max(1, min(groups, budget // max(per_region, 1)))
    return regions, tokens


def _split_heads(x: Tensor, heads: int) -> Tensor:
    """``[G, L, C]`` -> ``[G, heads, L, C // heads]``."""
    g, length, c = x.shape
    return x.view(g, length, heads, c // heads).transpose(1, 2)


def _merge_heads(x: Tensor) -> Tensor:
    """``[G, heads, L, d]`` -> ``[G, L, heads * d]``."""
    g, m, length, d = x.shape
    return x.transpose(1, 2).reshape(g, length, m * d)


class _ChunkedAttention(torch.autograd.Function):
    """Region-major routed attention with tile-by-tile forward and backward.

    Inputs: ``q`` ``[G, Lq, Cqk]``, ``k`` ``[G, Lk, Cqk]``, ``v`` ``[G, Lk, Cv]`` with
    ``G = B * R`` global regions, ``gidx`` ``[G, topk]`` global key-region ids, optional
    ``weight`` ``[G, topk]`` (soft routing) and ``bias`` ``[R, Lk]`` (masked keys).
    """

    @staticmethod
    def forward(ctx, q, k, v, gidx, weight, bias, scale, heads, regions_per_group, budget):
        g_total, lq, _ = q.shape
        lk = k.shape[1]
        topk = gidx.shape[1]
        keys = topk * lk
        gs, ts = plan_tiles(g_total, lq, keys, heads, q.shape[2] + v.shape[2], budget)
        out = q.new_empty(g_total, lq, v.shape[2])
        acc = _acc_dtype(q.dtype)
        lse = torch.empty(g_total, heads, lq, dtype=acc, device=q.device)
        for g0 in range(0, g_total, gs):
            g1 = min(g0 + gs, g_total)
            ids = gidx[g0:g1].reshape(-1)
            k_sel, v_sel = _gather(k, v, ids, g1 - g0, keys, weight, g0, g1, heads)
            b_sel = _bias(bias, ids, regions_per_group, g1 - g0, keys)
            for t0 in range(0, lq, ts):
                t1 = min(t0 + ts, lq)
                qt = _split_heads(q[g0:g1, t0:t1], heads)
                s = (qt * scale) @ k_sel.transpose(-1, -2)  # g, m, t, keys
                if b_sel is not None:
                    s = s + b_sel
                lse[g0:g1, :, t0:t1] = torch.logsumexp(s.to(acc), dim=-1)
                p = torch.softmax(s, dim=-1)
                out[g0:g1, t0:t1] = _merge_heads(p @ v_sel)
        ctx.save_for_backward(q, k, v, gidx, weight, bias, out, lse)
        ctx.plan = (scale, heads, regions_per_group, gs, ts)
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, dout):
        q, k, v, gidx, weight, bias, out, lse = ctx.saved_tensors
        scale, heads, regions_per_group, gs, ts = ctx.plan
        g_total, lq, _ = q.shape
        lk = k.shape[1]
        topk = gidx.shape[1]
        keys = topk * lk
        dout = dout.contiguous()
        dq = torch.zeros_like(q)
        dk = torch.zeros_like(k)
        dv = torch.zeros_like(v)
        want_dw = weight is not None and ctx.needs_input_grad[4]
        acc = lse.dtype
        dw = torch.zeros(g_total, topk, dtype=acc, device=q.device) if want_dw else None
        # delta = rowsum(dO * O) per head: [G, heads, Lq]
        delta = _split_heads((dout.to(acc) * out.to(acc)), heads).sum(-1)
        for g0 in range(0, g_total, gs):
            g1 = min(g0 + gs, g_total)
            g = g1 - g0
            ids = gidx[g0:g1].reshape(-1)
            k_raw, v_raw = _gather(k, v, ids, g, keys, None, g0, g1, heads)
            if weight is not None:
                w = _slot_weight(weight, g0, g1, lk, q.dtype)  # g, 1, keys, 1
                k_sel, v_sel = k_raw * w, v_raw * w
            else:
                k_sel, v_sel = k_raw, v_raw
            b_sel = _bias(bias, ids, regions_per_group, g, keys)
            dk_sel = torch.zeros_like(k_sel)
            dv_sel = torch.zeros_like(v_sel)
            for t0 in range(0, lq, ts):
                t1 = min(t0 + ts, lq)
                qt = _split_heads(q[g0:g1, t0:t1], heads)  # g, m, t, d
                dot = _split_heads(dout[g0:g1, t0:t1], heads)  # g, m, t, dv
                s = (qt * scale) @ k_sel.transpose(-1, -2)
                if b_sel is not None:
                    s = s + b_sel
                p = torch.exp(s.to(acc) - lse[g0:g1, :, t0:t1, None])
                dp = (dot @ v_sel.transpose(-1, -2)).to(acc)
                ds = (p * (dp - delta[g0:g1, :, t0:t1, None])).to(q.dtype)
                p = p.to(q.dtype)
                dv_sel += p.transpose(-1, -2) @ dot
                dk_sel += ds.transpose(-1, -2) @ (qt * scale)
                dq[g0:g1, t0:t1] = _merge_heads((ds @ k_sel) * scale)
            dk_sel = _merge_heads(dk_sel)  # g, keys, Cqk
            dv_sel = _merge_heads(dv_sel)  # g, keys, Cv
            if weight is not None:
                w = w.view(g, keys, 1)
                if want_dw:
                    contrib = (dk_sel.to(acc) * _merge_heads(k_raw).to(acc)).sum(-1)
                    contrib = contrib + (dv_sel.to(acc) * _merge_heads(v_raw).to(acc)).sum(-1)
                    dw[g0:g1] = contrib.view(g, topk, lk).sum(-1)
                dk_sel = dk_sel * w
                dv_sel = dv_sel * w
            dk.index_add_(0, ids, dk_sel.reshape(g * topk, lk, -1))
            dv.index_add_(0, ids, dv_sel.reshape(g * topk, lk, -1))
        if dw is not None:
            dw = dw.to(weight.dtype)
        return dq, dk, dv, None, dw, None, None, None, None, None


def _acc_dtype(dtype: torch.dtype) -> torch.dtype:
    """Accumulation dtype of the softmax statistics: float64 for float64 inputs, else float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def _gather(k, v, ids, g, keys, weight, g0, g1, heads):
    """Routed keys and values of ``g`` query regions: ``[g, heads, keys, d]`` each."""
    k_sel = k.index_select(0, ids).view(g, keys, -1)
    v_sel = v.index_select(0, ids).view(g, keys, -1)
    if weight is not None:
        w = _slot_weight(weight, g0, g1, k.shape[1], k.dtype).view(g, keys, 1)
        k_sel, v_sel = k_sel * w, v_sel * w
    return _split_heads(k_sel, heads), _split_heads(v_sel, heads)


def _slot_weight(weight, g0, g1, lk, dtype):
    """Soft-routing weight of every gathered key: ``[g, 1, topk*lk, 1]``."""
    w = weight[g0:g1].to(dtype).repeat_interleave(lk, dim=1)
    return w[:, None, :, None]


def _bias(bias, ids, regions_per_group, g, keys):
    """Key-mask bias of the gathered keys, ``[g, 1, 1, keys]``, or None."""
    if bias is None:
        return None
    return bias[ids % regions_per_group].view(g, 1, 1, keys)


def routed_attention(
    query: Tensor,
    key: Tensor,
    value: Tensor,
    index: Tensor,
    weight: Tensor | None,
    *,
    regions: tuple[int, int],
    num_heads: int,
    scale: float,
    key_valid: tuple[int, int] | None = None,
    chunk_bytes: int | None = None,
) -> Tensor:
    """Routed attention in bounded memory, NHWC in and out; see ``biformer.ops.routed_attention``."""
    b, hq, wq, _ = query.shape
    r = regions[0] * regions[1]
    q = to_regions(query, regions).reshape(b * r, -1, query.shape[-1])
    k = to_regions(key, regions).reshape(b * r, -1, key.shape[-1])
    v = to_regions(value, regions).reshape(b * r, -1, value.shape[-1])
    offsets = torch.arange(b, device=index.device).view(b, 1, 1) * r
    gidx = (index.long() + offsets).reshape(b * r, -1)
    bias = None
    if key_valid is not None:
        bias = key_bias(key.shape[1:3], key_valid, regions, query.dtype, query.device)
    budget = chunk_bytes or default_chunk_bytes()
    if weight is not None:
        weight = weight.reshape(b * r, -1)
    out = _ChunkedAttention.apply(q, k, v, gidx, weight, bias, float(scale), num_heads, r, budget)
    return from_regions(out.view(b, r, -1, value.shape[-1]), regions, (hq, wq))


def estimated_tile_count(problem: Problem, chunk_bytes: int | None = None) -> int:
    """How many tiles the chunked backend will run for ``problem`` (for logs and benchmarks)."""
    groups = problem.batch * problem.num_regions
    keys = problem.topk * problem.kv_tokens
    channels = problem.num_heads * (problem.qk_head_dim + problem.v_head_dim)
    gs, ts = plan_tiles(
        groups, problem.q_tokens, keys, problem.num_heads, channels,
        chunk_bytes or default_chunk_bytes(),
    )
    return math.ceil(groups / gs) * math.ceil(problem.q_tokens / ts)
