"""Triton kernels of routed attention (fused gather + attention) and their launchers.

Three kernels, all reading queries, keys and values straight from NHWC tensors with their
strides (typically slices of one ``[B, H, W, 2*Cqk + Cv]`` projection) and never materialising
gathered keys/values or the attention matrix:

* ``_fwd_kernel``: one program per (tile of query rows, head). A tile is either ``GQ`` whole
  query regions packed together (small regions) or ``BLOCK_M`` rows of one region (large
  regions). The routed keys of the tile's regions form one flat key list (region, slot, token),
  loaded ``BLOCK_N`` at a time by address arithmetic; one pass when the list fits one tile,
  online softmax (exp2) beyond. Writes the NHWC output and the base-2 log-sum-exp per row.
* ``_bwd_dq_kernel``: same grid and key walk; recomputes P from the saved log-sum-exp, stores
  ``delta = rowsum(O * dO)`` for the next kernel, writes dQ, and (soft routing) the per-slot
  routing-weight gradient, one partial per (query tile, head) summed afterwards.
* ``_bwd_dkdv_kernel``: one program per (tile of key tokens of one key region, head); walks the
  query rows of every routing entry that chose this region (transposed routing, no atomics) and
  writes dK and dV once; a region chosen by nobody gets zeros.

Token ``i`` of region ``r`` (raster order) of image ``b`` lives at row
``(r // Rw) * rh + i // rw``, column ``(r % Rw) * rw + i % rw``; channels are ``(head, head_dim)``.
Scores are ``scale * q.k`` (times the routing weight with soft routing); keys outside
``(valid_h, valid_w)`` are masked when ``MASK_KEYS``.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass

import torch
import triton
import triton.language as tl
from torch import Tensor

from ..transposed_routing import transpose_routing

__all__ = [
    "KERNELS",
    "Launch",
    "Tiles",
    "backward",
    "backward_launches",
    "compile_spec",
    "constexprs",
    "forward",
    "forward_launch",
    "interpreting",
    "launches",
    "plan_tiles",
]

LOG2E = math.log2(math.e)


def interpreting() -> bool:
    """True when these kernels run in the Triton CPU interpreter (``TRITON_INTERPRET=1``)."""
    return not isinstance(_fwd_kernel, triton.runtime.jit.JITFunction)


# ----------------------------------------------------------------------------------------------
# kernels


@triton.jit
def _fwd_kernel(
    Q, K, V, IDX, W, OUT, LSE,
    sqb, sqh, sqw, sqc,
    skb, skh, skw, skc,
    svb, svh, svw, svc,
    sob, soh, sow,
    n_groups, n_regions, regions_w,
    q_h, q_w, q_tokens,
    k_h, k_w, k_tokens,
    topk, valid_h, valid_w,
    qk_scale, d_qk, d_v, n_heads, q_tiles,
    GQ: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    BLOCK_DQK: tl.constexpr, BLOCK_DV: tl.constexpr,
    HAS_W: tl.constexpr, MASK_KEYS: tl.constexpr, DOT_F32: tl.constexpr, PREC: tl.constexpr,
):
    pid = tl.program_id(0)
    head = tl.program_id(1)
    offs_m = tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_dqk = tl.arange(0, BLOCK_DQK)
    offs_dv = tl.arange(0, BLOCK_DV)
    # query rows of this program: GQ packed regions, or one tile of one region
    if GQ == 1:
        g_first = pid // q_tiles
        tok = (pid % q_tiles) * BLOCK_M + offs_m
        lr = offs_m * 0
        row_ok = tok < q_tokens
    else:
        g_first = pid * GQ
        lr = offs_m // q_tokens
        tok = offs_m % q_tokens
        row_ok = (lr < GQ) & (g_first + lr < n_groups)
    g = g_first + lr  # global query region of every row
    qb = g // n_regions
    qr = g % n_regions
    q_row = (qr // regions_w) * q_h + tok // q_w
    q_col = (qr % regions_w) * q_w + tok % q_w
    q_ptr = Q + qb.to(tl.int64) * sqb + q_row * sqh + q_col * sqw
    dqk_ok = offs_dqk < d_qk
    dv_ok = offs_dv < d_v
    q = tl.load(
        q_ptr[:, None] + (head * d_qk + offs_dqk)[None, :] * sqc,
        mask=row_ok[:, None] & dqk_ok[None, :], other=0.0,
    )  # BLOCK_M, BLOCK_DQK
    if DOT_F32:
        q = q.to(tl.float32)

    keys_per_region = topk * k_tokens
    n_keys = GQ * keys_per_region
    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_DV], tl.float32)
    for j0 in range(0, n_keys, BLOCK_N):
        # flat key list: (local query region, routed slot, key token)
        j = j0 + offs_n
        klr = j // keys_per_region
        slot = (j % keys_per_region) // k_tokens
        t = j % k_tokens
        kg = g_first + klr
        key_ok = (j < n_keys) & (kg < n_groups)
        kreg = tl.load(IDX + kg * topk + slot, mask=key_ok, other=0)
        k_row = (kreg // regions_w) * k_h + t // k_w
        k_col = (kreg % regions_w) * k_w + t % k_w
        if MASK_KEYS:
            key_ok = key_ok & (k_row < valid_h) & (k_col < valid_w)
        kb = (kg // n_regions).to(tl.int64)
        k = tl.load(
            (K + kb * skb + k_row * skh + k_col * skw)[:, None]
            + (head * d_qk + offs_dqk)[None, :] * skc,
            mask=key_ok[:, None] & dqk_ok[None, :], other=0.0,
        )  # BLOCK_N, BLOCK_DQK
        v = tl.load(
            (V + kb * svb + k_row * svh + k_col * svw)[:, None]
            + (head * d_v + offs_dv)[None, :] * svc,
            mask=key_ok[:, None] & dv_ok[None, :], other=0.0,
        )  # BLOCK_N, BLOCK_DV
        if DOT_F32:
            k = k.to(tl.float32)
            v = v.to(tl.float32)
        s = tl.dot(q, tl.trans(k), input_precision=PREC) * qk_scale  # BLOCK_M, BLOCK_N
        if HAS_W:
            w = tl.load(W + kg * topk + slot, mask=key_ok, other=0.0).to(tl.float32)
            s = s * w[None, :]
        ok = row_ok[:, None] & key_ok[None, :]
        if GQ > 1:
            ok = ok & (lr[:, None] == klr[None, :])  # block diagonal: each region its own keys
        s = tl.where(ok, s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)  # rows with no key yet
        alpha = tl.exp2(m_i - m_safe)
        p = tl.exp2(s - m_safe[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)
        if HAS_W:
            p = p * w[None, :]
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=PREC)
        m_i = m_new

    has_keys = l_i > 0.0
    out = acc / tl.where(has_keys, l_i, 1.0)[:, None]
    o_ptr = OUT + qb.to(tl.int64) * sob + q_row * soh + q_col * sow
    tl.store(
        o_ptr[:, None] + (head * d_v + offs_dv)[None, :],
        out.to(OUT.dtype.element_ty),
        mask=row_ok[:, None] & dv_ok[None, :],
    )
    # a row whose every key is masked has no probability mass: +inf makes P = 0 in backward
    lse = tl.where(has_keys, m_i + tl.log2(tl.where(has_keys, l_i, 1.0)), float("inf"))
    tl.store(LSE + (g * n_heads + head) * q_tokens + tok, lse, mask=row_ok)


@triton.jit
def _bwd_dq_kernel(
    Q, K, V, IDX, W, OUT, DO, LSE, DELTA, DQ, DW,
    sqb, sqh, sqw, sqc,
    skb, skh, skw, skc,
    svb, svh, svw, svc,
    sob, soh, sow,
    sdob, sdoh, sdow, sdoc,
    sdqb, sdqh, sdqw,
    n_groups, n_regions, regions_w,
    q_h, q_w, q_tokens,
    k_h, k_w, k_tokens,
    topk, valid_h, valid_w,
    sm_scale, qk_scale, d_qk, d_v, n_heads, q_tiles,
    GQ: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    BLOCK_DQK: tl.constexpr, BLOCK_DV: tl.constexpr, SLOTS: tl.constexpr,
    HAS_W: tl.constexpr, MASK_KEYS: tl.constexpr, DOT_F32: tl.constexpr, PREC: tl.constexpr,
):
    pid = tl.program_id(0)
    head = tl.program_id(1)
    offs_m = tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_dqk = tl.arange(0, BLOCK_DQK)
    offs_dv = tl.arange(0, BLOCK_DV)
    if GQ == 1:
        g_first = pid // q_tiles
        q_tile = pid % q_tiles
        tok = q_tile * BLOCK_M + offs_m
        lr = offs_m * 0
        row_ok = tok < q_tokens
    else:
        g_first = pid * GQ
        q_tile = 0
        lr = offs_m // q_tokens
        tok = offs_m % q_tokens
        row_ok = (lr < GQ) & (g_first + lr < n_groups)
    g = g_first + lr
    qb = (g // n_regions).to(tl.int64)
    qr = g % n_regions
    q_row = (qr // regions_w) * q_h + tok // q_w
    q_col = (qr % regions_w) * q_w + tok % q_w
    dqk_ok = offs_dqk < d_qk
    dv_ok = offs_dv < d_v
    qmask = row_ok[:, None] & dqk_ok[None, :]
    vmask = row_ok[:, None] & dv_ok[None, :]
    q = tl.load(
        (Q + qb * sqb + q_row * sqh + q_col * sqw)[:, None]
        + (head * d_qk + offs_dqk)[None, :] * sqc,
        mask=qmask, other=0.0,
    )
    do = tl.load(
        (DO + qb * sdob + q_row * sdoh + q_col * sdow)[:, None]
        + (head * d_v + offs_dv)[None, :] * sdoc,
        mask=vmask, other=0.0,
    )
    o = tl.load(
        (OUT + qb * sob + q_row * soh + q_col * sow)[:, None] + (head * d_v + offs_dv)[None, :],
        mask=vmask, other=0.0,
    )
    stat = (g * n_heads + head) * q_tokens + tok
    delta = tl.sum(o.to(tl.float32) * do.to(tl.float32), 1)  # BLOCK_M
    tl.store(DELTA + stat, delta, mask=row_ok)
    lse = tl.load(LSE + stat, mask=row_ok, other=0.0)
    if DOT_F32:
        q = q.to(tl.float32)
        do = do.to(tl.float32)

    keys_per_region = topk * k_tokens
    n_keys = GQ * keys_per_region
    dq = tl.zeros([BLOCK_M, BLOCK_DQK], tl.float32)
    offs_s = tl.arange(0, SLOTS)
    dw = tl.zeros([SLOTS], tl.float32)
    for j0 in range(0, n_keys, BLOCK_N):
        j = j0 + offs_n
        klr = j // keys_per_region
        slot = (j % keys_per_region) // k_tokens
        t = j % k_tokens
        kg = g_first + klr
        key_ok = (j < n_keys) & (kg < n_groups)
        kreg = tl.load(IDX + kg * topk + slot, mask=key_ok, other=0)
        k_row = (kreg // regions_w) * k_h + t // k_w
        k_col = (kreg % regions_w) * k_w + t % k_w
        if MASK_KEYS:
            key_ok = key_ok & (k_row < valid_h) & (k_col < valid_w)
        kb = (kg // n_regions).to(tl.int64)
        k = tl.load(
            (K + kb * skb + k_row * skh + k_col * skw)[:, None]
            + (head * d_qk + offs_dqk)[None, :] * skc,
            mask=key_ok[:, None] & dqk_ok[None, :], other=0.0,
        )
        v = tl.load(
            (V + kb * svb + k_row * svh + k_col * svw)[:, None]
            + (head * d_v + offs_dv)[None, :] * svc,
            mask=key_ok[:, None] & dv_ok[None, :], other=0.0,
        )
        if DOT_F32:
            k = k.to(tl.float32)
            v = v.to(tl.float32)
        qk = tl.dot(q, tl.trans(k), input_precision=PREC)  # raw q.k, BLOCK_M x BLOCK_N
        s = qk * qk_scale
        if HAS_W:
            w = tl.load(W + kg * topk + slot, mask=key_ok, other=0.0).to(tl.float32)
            s = s * w[None, :]
        ok = row_ok[:, None] & key_ok[None, :]
        if GQ > 1:
            ok = ok & (lr[:, None] == klr[None, :])
        p = tl.where(ok, tl.exp2(s - lse[:, None]), 0.0)
        dp_raw = tl.dot(do, tl.trans(v), input_precision=PREC)  # dO . v
        if HAS_W:
            ds = p * (dp_raw * w[None, :] - delta[:, None])
            # d/dw of the scores (w * scale * q.k) and of the weighted values (w * v)
            contrib = tl.sum(ds * qk * sm_scale + p * dp_raw, 0)  # BLOCK_N
            sid = tl.where(key_ok, klr * topk + slot, -1)
            dw += tl.sum(tl.where(sid[None, :] == offs_s[:, None], contrib[None, :], 0.0), 1)
            ds = ds * w[None, :]
        else:
            ds = p * (dp_raw - delta[:, None])
        dq += tl.dot(ds.to(k.dtype), k, input_precision=PREC)
    dq = dq * sm_scale
    tl.store(
        (DQ + qb * sdqb + q_row * sdqh + q_col * sdqw)[:, None] + (head * d_qk + offs_dqk)[None, :],
        dq.to(DQ.dtype.element_ty),
        mask=qmask,
    )
    if HAS_W:
        # partial routing-weight gradient of this (query tile, head): [q_tiles, heads, G, topk]
        s_lr = offs_s // topk
        s_slot = offs_s % topk
        s_g = g_first + s_lr
        s_ok = (s_lr < GQ) & (s_g < n_groups)
        base = (q_tile * n_heads + head).to(tl.int64) * n_groups * topk
        tl.store(DW + base + s_g * topk + s_slot, dw, mask=s_ok)


@triton.jit
def _bwd_dkdv_kernel(
    Q, K, V, W, DO, LSE, DELTA, ENTRIES, OFFSETS, DK, DV,
    sqb, sqh, sqw, sqc,
    skb, skh, skw, skc,
    svb, svh, svw, svc,
    sdob, sdoh, sdow, sdoc,
    sdkb, sdkh, sdkw,
    sdvb, sdvh, sdvw,
    n_regions, regions_w,
    q_h, q_w, q_tokens,
    k_h, k_w, k_tokens,
    topk, valid_h, valid_w,
    sm_scale, qk_scale, d_qk, d_v, n_heads, k_tiles,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    BLOCK_DQK: tl.constexpr, BLOCK_DV: tl.constexpr,
    HAS_W: tl.constexpr, MASK_KEYS: tl.constexpr, DOT_F32: tl.constexpr, PREC: tl.constexpr,
):
    pid = tl.program_id(0)
    head = tl.program_id(1)
    kv = pid // k_tiles  # global key region
    t = (pid % k_tiles) * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_m = tl.arange(0, BLOCK_M)
    offs_dqk = tl.arange(0, BLOCK_DQK)
    offs_dv = tl.arange(0, BLOCK_DV)
    dqk_ok = offs_dqk < d_qk
    dv_ok = offs_dv < d_v
    key_ok = t < k_tokens
    kb = (kv // n_regions).to(tl.int64)
    kr = kv % n_regions
    k_row = (kr // regions_w) * k_h + t // k_w
    k_col = (kr % regions_w) * k_w + t % k_w
    if MASK_KEYS:
        key_ok = key_ok & (k_row < valid_h) & (k_col < valid_w)
    kmask = key_ok[:, None] & dqk_ok[None, :]
    vmask = key_ok[:, None] & dv_ok[None, :]
    k = tl.load(
        (K + kb * skb + k_row * skh + k_col * skw)[:, None]
        + (head * d_qk + offs_dqk)[None, :] * skc,
        mask=kmask, other=0.0,
    )  # BLOCK_N, BLOCK_DQK
    v = tl.load(
        (V + kb * svb + k_row * svh + k_col * svw)[:, None]
        + (head * d_v + offs_dv)[None, :] * svc,
        mask=vmask, other=0.0,
    )  # BLOCK_N, BLOCK_DV
    if DOT_F32:
        k = k.to(tl.float32)
        v = v.to(tl.float32)
    start = tl.load(OFFSETS + kv)
    n_rows = (tl.load(OFFSETS + kv + 1) - start) * q_tokens
    dk = tl.zeros([BLOCK_N, BLOCK_DQK], tl.float32)
    dv = tl.zeros([BLOCK_N, BLOCK_DV], tl.float32)
    # query rows of every entry that chose this region, flattened: (entry, query token)
    for f0 in range(0, n_rows, BLOCK_M):
        f = f0 + offs_m
        row_ok = f < n_rows
        e = tl.load(ENTRIES + start + f // q_tokens, mask=row_ok, other=0)
        tok = f % q_tokens
        g = e // topk
        qb = (g // n_regions).to(tl.int64)
        qr = g % n_regions
        q_row = (qr // regions_w) * q_h + tok // q_w
        q_col = (qr % regions_w) * q_w + tok % q_w
        q = tl.load(
            (Q + qb * sqb + q_row * sqh + q_col * sqw)[:, None]
            + (head * d_qk + offs_dqk)[None, :] * sqc,
            mask=row_ok[:, None] & dqk_ok[None, :], other=0.0,
        )  # BLOCK_M, BLOCK_DQK
        do = tl.load(
            (DO + qb * sdob + q_row * sdoh + q_col * sdow)[:, None]
            + (head * d_v + offs_dv)[None, :] * sdoc,
            mask=row_ok[:, None] & dv_ok[None, :], other=0.0,
        )  # BLOCK_M, BLOCK_DV
        stat = (g * n_heads + head) * q_tokens + tok
        lse = tl.load(LSE + stat, mask=row_ok, other=0.0)
        delta = tl.load(DELTA + stat, mask=row_ok, other=0.0)
        if DOT_F32:
            q = q.to(tl.float32)
            do = do.to(tl.float32)
        s = tl.dot(q, tl.trans(k), input_precision=PREC) * qk_scale  # BLOCK_M, BLOCK_N
        if HAS_W:
            w = tl.load(W + e, mask=row_ok, other=0.0).to(tl.float32)  # BLOCK_M
            s = s * w[:, None]
        p = tl.where(row_ok[:, None] & key_ok[None, :], tl.exp2(s - lse[:, None]), 0.0)
        dp = tl.dot(do, tl.trans(v), input_precision=PREC)  # BLOCK_M, BLOCK_N
        if HAS_W:
            pw = p * w[:, None]
            ds = p * (dp * w[:, None] - delta[:, None]) * w[:, None]
        else:
            pw = p
            ds = p * (dp - delta[:, None])
        dv += tl.dot(tl.trans(pw.to(do.dtype)), do, input_precision=PREC)
        dk += tl.dot(tl.trans(ds.to(q.dtype)), q, input_precision=PREC)
    dk = dk * sm_scale
    tl.store(
        (DK + kb * sdkb + k_row * sdkh + k_col * sdkw)[:, None] + (head * d_qk + offs_dqk)[None, :],
        dk.to(DK.dtype.element_ty),
        mask=(t < k_tokens)[:, None] & dqk_ok[None, :],
    )
    tl.store(
        (DV + kb * sdvb + k_row * sdvh + k_col * sdvw)[:, None] + (head * d_v + offs_dv)[None, :],
        dv.to(DV.dtype.element_ty),
        mask=(t < k_tokens)[:, None] & dv_ok[None, :],
    )


KERNELS = {"fwd": _fwd_kernel, "bwd_dq": _bwd_dq_kernel, "bwd_dkdv": _bwd_dkdv_kernel}


# ----------------------------------------------------------------------------------------------
# tile table


def _pow2(n: int, lo: int = 16) -> int:
    return max(lo, triton.next_power_of_2(max(int(n), 1)))


@dataclass(frozen=True)
class Tiles:
    """Tile choice of one call (see ``plan_tiles``)."""

    gq: int  # query regions packed per forward/dQ program (1: tile a region's rows instead)
    block_m: int  # query rows per forward/dQ program
    block_n: int  # keys per forward/dQ iteration
    q_tiles: int  # programs per query region when gq == 1
    bwd_block_m: int  # query rows per dK/dV iteration (flattened over routing entries)
    bwd_block_n: int  # key tokens per dK/dV program
    k_tiles: int  # dK/dV programs per key region
    block_dqk: int
    block_dv: int
    slots: int  # soft-routing weight-gradient slots per dQ program (gq * topk, power of two)
    num_warps: int  # forward and dQ
    bwd_num_warps: int  # dK/dV


def plan_tiles(
    *, q_tokens: int, k_tokens: int, topk: int, qk_head_dim: int, v_head_dim: int,
    soft_routing: bool = False,
) -> Tiles:
    """Heuristic tile table (no autotuning: it needs a GPU driver and costs compile time).

    BiFormer-S (head_dim 32): stage 1 (64-token regions, topk 1) Q 64 x keys 64 in one pass;
    stage 2 (16, topk 4) Q 16 x 64 one pass; stage 3 (4 tokens, topk 16) 4 regions packed into
    Q 16, their 4 x 64 keys in 4 block-diagonal tiles of 64. Backward dK/dV: 64 query rows per
    iteration against one key region's tokens (padded to 16 at least: tl.dot needs K >= 16).
    """
    block_dqk, block_dv = _pow2(qk_head_dim), _pow2(v_head_dim)
    wide = max(block_dqk, block_dv) > 128
    if q_tokens >= 16:
        gq, block_m = 1, min(_pow2(q_tokens), 32 if wide else 64)
    else:
        gq, block_m = max(1, 16 // q_tokens), 16
    topk_p = triton.next_power_of_2(topk)
    if soft_routing:
        while gq > 1 and gq * topk_p > 256:  # bound the per-program weight-gradient slots
            gq //= 2
    q_tiles = 1 if gq > 1 else math.ceil(q_tokens / block_m)
    block_n = min(_pow2(gq * topk * k_tokens), 32 if wide else 64)
    bwd_block_n = min(_pow2(k_tokens), 32 if wide else 64)
    bwd_block_m = 32 if wide else 64
    return Tiles(
        gq=gq,
        block_m=block_m,
        block_n=block_n,
        q_tiles=q_tiles,
        bwd_block_m=bwd_block_m,
        bwd_block_n=bwd_block_n,
        k_tiles=math.ceil(k_tokens / bwd_block_n),
        block_dqk=block_dqk,
        block_dv=block_dv,
        slots=_pow2(gq * topk_p, 1) if soft_routing else 1,
        num_warps=4 if block_m >= 64 else 2,
        bwd_num_warps=4,
    )


# ----------------------------------------------------------------------------------------------
# launchers


@dataclass(frozen=True)
class _Geometry:
    batch: int
    regions: tuple[int, int]
    q_region: tuple[int, int]
    k_region: tuple[int, int]
    topk: int
    heads: int
    d_qk: int
    d_v: int

    @property
    def groups(self) -> int:
        return self.batch * self.regions[0] * self.regions[1]

    @property
    def q_tokens(self) -> int:
        return self.q_region[0] * self.q_region[1]

    @property
    def k_tokens(self) -> int:
        return self.k_region[0] * self.k_region[1]


def _geometry(query: Tensor, key: Tensor, value: Tensor, index: Tensor, regions, heads):
    b, hq, wq, cqk = query.shape
    _, hk, wk, cv = value.shape
    rh, rw = regions
    return _Geometry(
        batch=b,
        regions=(rh, rw),
        q_region=(hq // rh, wq // rw),
        k_region=(hk // rh, wk // rw),
        topk=index.shape[-1],
        heads=heads,
        d_qk=cqk // heads,
        d_v=cv // heads,
    )


def _precision(dtype: torch.dtype) -> str:
    """Product precision of fp32 dots: exact unless TF32 is allowed for torch matmuls too
    (``torch.backends.cuda.matmul.allow_tf32`` / ``torch.set_float32_matmul_precision``)."""
    if dtype == torch.float32 and not torch.backends.cuda.matmul.allow_tf32:
        return "ieee"
    return "tf32"  # 16-bit inputs ignore it


def constexprs(
    name: str, tiles: Tiles, *, dtype: torch.dtype, soft: bool, mask_keys: bool,
    interpret: bool = False,
) -> dict[str, object]:
    """Compile-time arguments of kernel ``name`` (a key of ``KERNELS``) for one call."""
    values: dict[str, object] = dict(
        BLOCK_DQK=tiles.block_dqk, BLOCK_DV=tiles.block_dv, HAS_W=soft, MASK_KEYS=mask_keys,
        DOT_F32=interpret, PREC=_precision(dtype),
    )
    if name == "bwd_dkdv":
        values.update(BLOCK_M=tiles.bwd_block_m, BLOCK_N=tiles.bwd_block_n)
    else:
        values.update(GQ=tiles.gq, BLOCK_M=tiles.block_m, BLOCK_N=tiles.block_n)
    if name == "bwd_dq":
        values["SLOTS"] = tiles.slots
    return values


@dataclass(frozen=True)
class Launch:
    """One kernel launch: kernel name, grid, runtime arguments (kernel order), constexprs."""

    name: str
    grid: tuple[int, int]
    args: tuple
    constexprs: dict
    num_warps: int

    def run(self) -> None:
        device = self.args[0].device
        guard = torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext()
        with guard:  # launch on the tensors' GPU, not the current one
            KERNELS[self.name][self.grid](*self.args, **self.constexprs, num_warps=self.num_warps)


def _shape_args(geo: _Geometry, key_valid) -> tuple[int, ...]:
    valid_h, valid_w = key_valid if key_valid is not None else (1 << 30, 1 << 30)
    return (
        geo.groups, geo.regions[0] * geo.regions[1], geo.regions[1],
        geo.q_region[0], geo.q_region[1], geo.q_tokens,
        geo.k_region[0], geo.k_region[1], geo.k_tokens,
        geo.topk, valid_h, valid_w,
    )


def _plan(geo: _Geometry, soft: bool) -> Tiles:
    return plan_tiles(
        q_tokens=geo.q_tokens, k_tokens=geo.k_tokens, topk=geo.topk, qk_head_dim=geo.d_qk,
        v_head_dim=geo.d_v, soft_routing=soft,
    )


def _query_programs(geo: _Geometry, tiles: Tiles) -> int:
    return triton.cdiv(geo.groups, tiles.gq) if tiles.gq > 1 else geo.groups * tiles.q_tiles


def forward_launch(
    query: Tensor, key: Tensor, value: Tensor, index: Tensor, weight: Tensor | None,
    out: Tensor, lse: Tensor, *, regions: tuple[int, int], num_heads: int, scale: float,
    key_valid: tuple[int, int] | None = None,
) -> Launch:
    """The forward launch writing ``out`` ``[B, Hq, Wq, Cv]`` and ``lse`` ``[B*R, heads, Lq]``."""
    geo = _geometry(query, key, value, index, regions, num_heads)
    soft = weight is not None
    tiles = _plan(geo, soft)
    args = (
        query, key, value, index, weight if soft else query, out, lse,
        *query.stride(), *key.stride(), *value.stride(), *out.stride()[:3],
        *_shape_args(geo, key_valid),
        float(scale) * LOG2E, geo.d_qk, geo.d_v, num_heads, tiles.q_tiles,
    )
    const = constexprs(
        "fwd", tiles, dtype=query.dtype, soft=soft, mask_keys=key_valid is not None,
        interpret=interpreting(),
    )
    return Launch("fwd", (_query_programs(geo, tiles), num_heads), args, const, tiles.num_warps)


def backward_launches(
    grad_out: Tensor, query: Tensor, key: Tensor, value: Tensor, index: Tensor,
    weight: Tensor | None, out: Tensor, lse: Tensor, delta: Tensor, dq: Tensor, dk: Tensor,
    dv: Tensor, dw_part: Tensor | None, entries: Tensor, offsets: Tensor, *,
    regions: tuple[int, int], num_heads: int, scale: float,
    key_valid: tuple[int, int] | None = None,
) -> tuple[Launch, Launch]:
    """The dQ launch (writes ``delta``, ``dq``, ``dw_part``) and the dK/dV launch (``dk``, ``dv``).

    ``delta`` is shaped like ``lse``; ``dw_part`` ``[q_tiles, heads, B*R, topk]`` fp32 (soft
    routing); ``entries``/``offsets`` the transposed routing (``transpose_routing``).
    """
    geo = _geometry(query, key, value, index, regions, num_heads)
    soft = weight is not None
    tiles = _plan(geo, soft)
    shape = _shape_args(geo, key_valid)
    flags = dict(
        dtype=query.dtype, soft=soft, mask_keys=key_valid is not None, interpret=interpreting()
    )
    w_arg = weight if soft else query
    dq_args = (
        query, key, value, index, w_arg, out, grad_out, lse, delta, dq,
        dw_part if soft else lse,
        *query.stride(), *key.stride(), *value.stride(), *out.stride()[:3],
        *grad_out.stride(), *dq.stride()[:3],
        *shape,
        float(scale), float(scale) * LOG2E, geo.d_qk, geo.d_v, num_heads, tiles.q_tiles,
    )
    dkdv_args = (
        query, key, value, w_arg, grad_out, lse, delta, entries, offsets, dk, dv,
        *query.stride(), *key.stride(), *value.stride(), *grad_out.stride(),
        *dk.stride()[:3], *dv.stride()[:3],
        *shape[1:],
        float(scale), float(scale) * LOG2E, geo.d_qk, geo.d_v, num_heads, tiles.k_tiles,
    )
    return (
        Launch(
            "bwd_dq", (_query_programs(geo, tiles), num_heads), dq_args,
            constexprs("bwd_dq", tiles, **flags), tiles.num_warps,
        ),
        Launch(
            "bwd_dkdv", (geo.groups * tiles.k_tiles, num_heads), dkdv_args,
            constexprs("bwd_dkdv", tiles, **flags), tiles.bwd_num_warps,
        ),
    )


def launches(
    query: Tensor, key: Tensor, value: Tensor, index: Tensor, weight: Tensor | None = None, *,
    regions: tuple[int, int], num_heads: int, scale: float,
    key_valid: tuple[int, int] | None = None,
) -> list[Launch]:
    """Forward, dQ and dK/dV launches of one call with placeholder buffers (meta tensors work):
    for ahead-of-time compilation (``compile_spec``) and inspection."""
    geo = _geometry(query, key, value, index, regions, num_heads)
    tiles = _plan(geo, weight is not None)
    new = dict(device=query.device)
    out = torch.empty(*query.shape[:3], value.shape[-1], dtype=query.dtype, **new)
    lse = torch.empty(geo.groups, num_heads, geo.q_tokens, dtype=torch.float32, **new)
    kw = dict(regions=regions, num_heads=num_heads, scale=scale, key_valid=key_valid)
    fwd = forward_launch(query, key, value, index, weight, out, lse, **kw)
    dw_part = torch.empty(tiles.q_tiles, num_heads, geo.groups, geo.topk, **new)
    entries = torch.empty(index.numel(), dtype=torch.int32, **new)
    offsets = torch.empty(geo.groups + 1, dtype=torch.int32, **new)
    bwd = backward_launches(
        torch.empty_like(out), query, key, value, index, weight, out, lse, torch.empty_like(lse),
        torch.empty_like(query, memory_format=torch.contiguous_format), torch.empty_like(
            key, memory_format=torch.contiguous_format), torch.empty_like(
            value, memory_format=torch.contiguous_format),
        dw_part, entries, offsets, **kw,
    )
    return [fwd, *bwd]


_TRITON_TYPES = {
    torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16", torch.int64: "i64",
    torch.int32: "i32",
}


def compile_spec(launch: Launch) -> tuple[dict[str, str], dict[str, object], dict]:
    """``(signature, constexprs, attrs)`` for ``triton.compiler.ASTSource`` of ``launch``.

    Mirrors the specialisation of a GPU launch (pointers 16-byte aligned, integers equal to 1
    made constant, integers divisible by 16 marked so), so kernels compile ahead of time for a
    target without a GPU, e.g. ``target=GPUTarget("cuda", 90, 32)``.
    """
    kernel = KERNELS[launch.name]
    const = dict(launch.constexprs)
    signature: dict[str, str] = {}
    attrs: dict[tuple[int, ...], list] = {}
    values = iter(launch.args)
    for i, arg in enumerate(kernel.arg_names):
        if arg in const:
            signature[arg] = "constexpr"
            continue
        value = next(values)
        if isinstance(value, Tensor):
            signature[arg] = "*" + _TRITON_TYPES[value.dtype]
            attrs[(i,)] = [["tt.divisibility", 16]]
        elif isinstance(value, float):
            signature[arg] = "fp32"
        elif value == 1:
            signature[arg] = "constexpr"
            const[arg] = 1
        else:
            signature[arg] = "i32" if -(2**31) <= value < 2**31 else "i64"
            if value % 16 == 0:
                attrs[(i,)] = [["tt.divisibility", 16]]
    return signature, const, attrs


def forward(
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
) -> tuple[Tensor, Tensor]:
    """Run the forward kernel.

    Args: NHWC (strided) ``query [B, Hq, Wq, Cqk]``, ``key [B, Hk, Wk, Cqk]``,
    ``value [B, Hk, Wk, Cv]``; contiguous ``index [B, R, topk]``; optional contiguous ``weight``.

    Returns:
        ``(out, lse)``: ``out`` ``[B, Hq, Wq, Cv]`` NHWC contiguous; ``lse`` ``[B*R, heads, Lq]``
        float32 base-2 log-sum-exp of every query row's scores (``+inf`` for a fully masked row).
    """
    geo = _geometry(query, key, value, index, regions, num_heads)
    b, hq, wq, _ = query.shape
    out = torch.empty(b, hq, wq, value.shape[-1], dtype=query.dtype, device=query.device)
    lse = torch.empty(geo.groups, num_heads, geo.q_tokens, dtype=torch.float32, device=query.device)
    forward_launch(
        query, key, value, index, weight, out, lse, regions=regions, num_heads=num_heads,
        scale=scale, key_valid=key_valid,
    ).run()
    return out, lse


def backward(
    grad_out: Tensor,
    query: Tensor,
    key: Tensor,
    value: Tensor,
    index: Tensor,
    weight: Tensor | None,
    out: Tensor,
    lse: Tensor,
    *,
    regions: tuple[int, int],
    num_heads: int,
    scale: float,
    key_valid: tuple[int, int] | None = None,
    weight_grad: bool = True,
) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
    """Run the dQ and dK/dV kernels (deterministic: every gradient element written once).

    ``out`` must be the contiguous forward output, ``lse`` its log-sum-exp.

    Returns:
        ``(dq, dk, dv, dw)``: NHWC contiguous gradients of ``query``, ``key``, ``value``;
        ``dw`` ``[B, R, topk]`` (soft routing with ``weight_grad``) or None.
    """
    geo = _geometry(query, key, value, index, regions, num_heads)
    soft = weight is not None
    tiles = _plan(geo, soft)
    device = query.device
    dq = torch.empty(query.shape, dtype=query.dtype, device=device)
    dk = torch.empty(key.shape, dtype=key.dtype, device=device)
    dv = torch.empty(value.shape, dtype=value.dtype, device=device)
    delta = torch.empty_like(lse)
    dw_part = None
    if soft:
        dw_part = torch.empty(
            tiles.q_tiles, num_heads, geo.groups, geo.topk, dtype=torch.float32, device=device
        )
    routing = transpose_routing(index)
    for launch in backward_launches(
        grad_out, query, key, value, index, weight, out, lse, delta, dq, dk, dv, dw_part,
        routing.entries, routing.offsets, regions=regions, num_heads=num_heads, scale=scale,
        key_valid=key_valid,
    ):
        launch.run()
    dw = None
    if soft and weight_grad:
        dw = dw_part.sum(dim=(0, 1)).view(index.shape).to(weight.dtype)
    return dq, dk, dv, dw
