"""The dQ kernel of the backward pass (FlashAttention-2 split, P recomputed from the LSE).

Same grid and key walk as the forward. Computes and stores ``delta = rowsum(O * dO)`` (fp32,
for the dK/dV kernel), then ``dS = P * (dO.v * w - delta)`` and ``dQ = scale * sum(dS * w * k)``.
With soft routing it also reduces the routing-weight gradient per (region, slot) in registers and
writes one partial per (query tile, head) into ``[q_tiles, heads, G, topk]``, summed afterwards
in a fixed order.
"""

import triton
import triton.language as tl

from .kernel_common import (
    device_function,
    load_tile,
    offsets,
    pair_mask,
    query_block,
    routed_key_tile,
    store_tile,
)


@device_function
def _store_weight_grad(DW, dw, g_first, q_tile, head, n_heads, n_groups, TOPK: tl.constexpr,
                       GQ: tl.constexpr, SLOTS: tl.constexpr):
    offs_s = tl.arange(0, SLOTS)
    s_lr = offs_s // TOPK
    s_g = g_first + s_lr
    s_ok = (s_lr < GQ) & (s_g < n_groups)
    base = (q_tile * n_heads + head).to(tl.int64) * n_groups * TOPK
    tl.store(DW + base + s_g * TOPK + offs_s % TOPK, dw, mask=s_ok)


@triton.jit
def dq_kernel(
    Q, K, V, IDX, W, OUT, DO, LSE, DELTA, DQ, DW,
    sqb, sqh, sqw, sqc, skb, skh, skw, skc, svb, svh, svw, svc, sob, soh, sow,
    sdob, sdoh, sdow, sdoc, sdqb, sdqh, sdqw,
    n_groups, valid_h, valid_w, sm_scale, qk_scale,
    N_REGIONS: tl.constexpr, REGIONS_W: tl.constexpr, Q_RH: tl.constexpr, Q_RW: tl.constexpr,
    K_RH: tl.constexpr, K_RW: tl.constexpr, TOPK: tl.constexpr, D_QK: tl.constexpr,
    D_V: tl.constexpr, Q_TILES: tl.constexpr, GQ: tl.constexpr, BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_DQK: tl.constexpr, BLOCK_DV: tl.constexpr,
    SLOTS: tl.constexpr, HAS_W: tl.constexpr, MASK_KEYS: tl.constexpr, DOT_F32: tl.constexpr,
    PREC: tl.constexpr,
):
    pid = tl.program_id(0)
    head = tl.program_id(1)
    n_heads = tl.num_programs(1)
    q, g_first, q_tile, lr, tok, row_ok, image, row, col = query_block(
        pid, head, n_groups, Q, sqb, sqh, sqw, sqc, N_REGIONS, REGIONS_W, Q_RH, Q_RW, D_QK,
        Q_TILES, GQ, BLOCK_M, BLOCK_DQK, DOT_F32,
    )
    do = load_tile(DO, offsets(image, row, col, sdob, sdoh, sdow), head * D_V, sdoc, row_ok, D_V,
                   BLOCK_DV, DOT_F32)
    o = load_tile(OUT, offsets(image, row, col, sob, soh, sow), head * D_V, 1, row_ok, D_V,
                  BLOCK_DV, True)
    stat = ((g_first + lr) * n_heads + head) * (Q_RH * Q_RW) + tok
    delta = tl.sum(o * do.to(tl.float32), 1)  # BLOCK_M
    tl.store(DELTA + stat, delta, mask=row_ok)
    lse = tl.load(LSE + stat, mask=row_ok, other=0.0)

    dq = tl.zeros([BLOCK_M, BLOCK_DQK], tl.float32)
    offs_s = tl.arange(0, SLOTS)
    dw = tl.zeros([SLOTS], tl.float32)
    for j0 in range(0, GQ * TOPK * K_RH * K_RW, BLOCK_N):
        k, v, w, key_ok, klr, slot = routed_key_tile(
            j0, g_first, n_groups, head, IDX, W, K, V, skb, skh, skw, skc, svb, svh, svw, svc,
            valid_h, valid_w, N_REGIONS, REGIONS_W, K_RH, K_RW, TOPK, D_QK, D_V, GQ, BLOCK_N,
            BLOCK_DQK, BLOCK_DV, HAS_W, MASK_KEYS, DOT_F32,
        )
        qk = tl.dot(q, tl.trans(k), input_precision=PREC)  # raw q.k, BLOCK_M x BLOCK_N
        s = qk * qk_scale
        if HAS_W:
            s = s * w[None, :]
        p = tl.where(pair_mask(row_ok, key_ok, lr, klr, GQ), tl.exp2(s - lse[:, None]), 0.0)
        dp_raw = tl.dot(do, tl.trans(v), input_precision=PREC)  # dO . v
        if HAS_W:
            ds = p * (dp_raw * w[None, :] - delta[:, None])
            # d/dw of the scores (w * scale * q.k) and of the weighted values (w * v)
            contrib = tl.sum(ds * qk * sm_scale + p * dp_raw, 0)  # BLOCK_N
            sid = tl.where(key_ok, klr * TOPK + slot, -1)
            dw += tl.sum(tl.where(sid[None, :] == offs_s[:, None], contrib[None, :], 0.0), 1)
            ds = ds * w[None, :]
        else:
            ds = p * (dp_raw - delta[:, None])
        dq += tl.dot(ds.to(k.dtype), k, input_precision=PREC)
    store_tile(DQ, offsets(image, row, col, sdqb, sdqh, sdqw), head * D_QK, dq * sm_scale, row_ok, D_QK, BLOCK_DQK)
    if HAS_W:
        _store_weight_grad(DW, dw, g_first, q_tile, head, n_heads, n_groups, TOPK, GQ, SLOTS)
