"""The forward kernel of routed attention (fused gather + attention).

One program per (tile of query rows, head). A tile is ``GQ`` whole query regions packed together
(small regions) or ``BLOCK_M`` rows of one region. The routed keys of the tile's regions form one
flat list ``(local region, slot, token)``, loaded ``BLOCK_N`` at a time by address arithmetic;
one pass when it fits a tile, online softmax (exp2) beyond. Writes the NHWC output and the base-2
log-sum-exp per row (``+inf`` for a row whose every key is masked).
"""

import triton
import triton.language as tl

from .kernel_common import (
    offsets,
    pair_mask,
    query_block,
    routed_key_tile,
    store_tile,
)


@triton.jit
def fwd_kernel(
    Q, K, V, IDX, W, OUT, LSE,
    sqb, sqh, sqw, sqc, skb, skh, skw, skc, svb, svh, svw, svc, sob, soh, sow,
    n_groups, valid_h, valid_w, qk_scale,
    N_REGIONS: tl.constexpr, REGIONS_W: tl.constexpr, Q_RH: tl.constexpr, Q_RW: tl.constexpr,
    K_RH: tl.constexpr, K_RW: tl.constexpr, TOPK: tl.constexpr, D_QK: tl.constexpr,
    D_V: tl.constexpr, Q_TILES: tl.constexpr, GQ: tl.constexpr, BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_DQK: tl.constexpr, BLOCK_DV: tl.constexpr,
    HAS_W: tl.constexpr, MASK_KEYS: tl.constexpr, DOT_F32: tl.constexpr, PREC: tl.constexpr,
):
    pid = tl.program_id(0)
    head = tl.program_id(1)
    q, g_first, q_tile, lr, tok, row_ok, image, row, col = query_block(
        pid, head, n_groups, Q, sqb, sqh, sqw, sqc, N_REGIONS, REGIONS_W, Q_RH, Q_RW, D_QK,
        Q_TILES, GQ, BLOCK_M, BLOCK_DQK, DOT_F32,
    )

    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_DV], tl.float32)
    for j0 in range(0, GQ * TOPK * K_RH * K_RW, BLOCK_N):
        k, v, w, key_ok, klr, slot = routed_key_tile(
            j0, g_first, n_groups, head, IDX, W, K, V, skb, skh, skw, skc, svb, svh, svw, svc,
            valid_h, valid_w, N_REGIONS, REGIONS_W, K_RH, K_RW, TOPK, D_QK, D_V, GQ, BLOCK_N,
            BLOCK_DQK, BLOCK_DV, HAS_W, MASK_KEYS, DOT_F32,
        )
        s = tl.dot(q, tl.trans(k), input_precision=PREC) * qk_scale  # BLOCK_M, BLOCK_N
        if HAS_W:
            s = s * w[None, :]
        s = tl.where(pair_mask(row_ok, key_ok, lr, klr, GQ), s, float("-inf"))
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
    store_tile(OUT, offsets(image, row, col, sob, soh, sow), head * D_V, out, row_ok, D_V, BLOCK_DV)
    # a row whose every key is masked has no probability mass: +inf makes P = 0 in backward
    lse = tl.where(has_keys, m_i + tl.log2(tl.where(has_keys, l_i, 1.0)), float("inf"))
    g = g_first + lr
    tl.store(LSE + (g * tl.num_programs(1) + head) * (Q_RH * Q_RW) + tok, lse, mask=row_ok)
