"""The dK/dV kernels of the backward pass: balanced over the transposed routing, no atomics.

The transposed routing (``transposed_routing.py``) lists, per image, the routing entries
``r * TOPK + slot`` sorted by the key region they chose; ``OFFSETS[b, kr]`` is where key region
``kr`` of image ``b`` starts. A key region routed by many entries (routing is concentrated: at
random init one BiFormer-S stage-1 region receives all 49) would make one program walk all their
query rows. The work is instead cut into chunks of ``CHUNK`` entries aligned to multiples of
``CHUNK`` in the flat sorted list:

* item ``kv < G``: the first chunk of key region ``kv`` (up to the next multiple of ``CHUNK``);
  also the zero gradient of a region nobody chose;
* item ``G + j``: the chunk starting at position ``j * CHUNK`` when that position continues a
  region that started earlier.

A region with one chunk writes its gradient directly. A longer one writes fp32 partials: the
chunk at ``j * CHUNK`` into slot ``2 j``, its first chunk into slot ``2 (lo // CHUNK) + 1`` (a
block of ``CHUNK`` positions holds at most one of each), and ``dkdv_reduce_kernel`` sums them
in ascending order: deterministic, every gradient element written once. ``SPLIT`` is False
when no region can receive more than ``CHUNK`` entries (``R * TOPK <= CHUNK``): then items are
the key regions only and no partials exist.
"""

import triton
import triton.language as tl

from .kernel_common import (
    device_function,
    load_tile,
    offsets,
    partial_offsets,
    region_at,
    region_range,
    store_tile,
    token_position,
)


@device_function
def _segment(item, n_groups, n_entries, SORTED, OFFSETS, N_REGIONS: tl.constexpr,
             TOPK: tl.constexpr, CHUNK: tl.constexpr, SPLIT: tl.constexpr):
    """Work item -> ``(image, kr, seg_lo, seg_hi, n_seg, slot, active)``."""
    first = item < n_groups
    s = (item - n_groups) * CHUNK
    c_image, c_kr, c_lo, c_hi, cont = region_at(s, (~first) & (s < n_entries), SORTED, OFFSETS,
                                                N_REGIONS, TOPK)
    cont = cont & (c_lo < s)  # a region start is the first chunk of an item < G
    f_image = tl.where(first, item, 0) // N_REGIONS
    f_kr = tl.where(first, item, 0) % N_REGIONS
    f_lo, f_hi = region_range(f_image, f_kr, OFFSETS, N_REGIONS, TOPK)
    image = tl.where(first, f_image, c_image)
    kr = tl.where(first, f_kr, c_kr)
    lo = tl.where(first, f_lo, c_lo)
    hi = tl.where(first, f_hi, c_hi)
    active = first | cont
    seg_lo = tl.where(first, lo, s)
    if SPLIT:
        seg_hi = tl.minimum(hi, tl.where(first, (lo // CHUNK + 1) * CHUNK, s + CHUNK))
        n_seg = tl.where(hi > lo, (hi - 1) // CHUNK - lo // CHUNK + 1, 1)
        slot = tl.where(first, 2 * (lo // CHUNK) + 1, 2 * (s // CHUNK))
    else:
        seg_hi = hi
        n_seg = hi * 0 + 1
        slot = hi * 0
    seg_hi = tl.where(active, seg_hi, seg_lo)
    return image, kr, seg_lo, seg_hi, n_seg, slot, active


@device_function
def _entry_rows(f0, seg_lo, image, head, n_heads, row_ok, Q, DO, W, LSE, DELTA, ENTRIES,
                sqb, sqh, sqw, sqc, sdob, sdoh, sdow, sdoc, N_REGIONS: tl.constexpr,
                REGIONS_W: tl.constexpr, Q_RH: tl.constexpr, Q_RW: tl.constexpr,
                TOPK: tl.constexpr, D_QK: tl.constexpr, D_V: tl.constexpr,
                BLOCK_M: tl.constexpr, BLOCK_DQK: tl.constexpr, BLOCK_DV: tl.constexpr,
                HAS_W: tl.constexpr, DOT_F32: tl.constexpr):
    """Rows ``f0 .. f0 + BLOCK_M`` of a segment, flattened ``(entry, query token)``: their
    queries, incoming gradients, LSE, delta and routing weight (ones without soft routing)."""
    q_tokens = Q_RH * Q_RW
    f = f0 + tl.arange(0, BLOCK_M)
    local = tl.load(ENTRIES + seg_lo + f // q_tokens, mask=row_ok, other=0).to(tl.int32)
    tok = f % q_tokens
    region = local // TOPK
    row, col = token_position(region, tok, REGIONS_W, Q_RH, Q_RW)
    q = load_tile(Q, offsets(image, row, col, sqb, sqh, sqw), head * D_QK, sqc, row_ok, D_QK,
                  BLOCK_DQK, DOT_F32)
    do = load_tile(DO, offsets(image, row, col, sdob, sdoh, sdow), head * D_V, sdoc, row_ok,
                   D_V, BLOCK_DV, DOT_F32)
    stat = ((image * N_REGIONS + region) * n_heads + head) * q_tokens + tok
    lse = tl.load(LSE + stat, mask=row_ok, other=0.0)
    delta = tl.load(DELTA + stat, mask=row_ok, other=0.0)
    if HAS_W:
        w = tl.load(W + image * (N_REGIONS * TOPK) + local, mask=row_ok, other=0.0)
        w = w.to(tl.float32)
    else:
        w = tl.full([BLOCK_M], 1.0, tl.float32)
    return q, do, lse, delta, w


@triton.jit
def dkdv_kernel(
    Q, K, V, W, DO, LSE, DELTA, SORTED, ENTRIES, OFFSETS, DK, DV, PART_K, PART_V,
    sqb, sqh, sqw, sqc, skb, skh, skw, skc, svb, svh, svw, svc,
    sdob, sdoh, sdow, sdoc, sdkb, sdkh, sdkw, sdvb, sdvh, sdvw,
    n_groups, n_entries, valid_h, valid_w, sm_scale, qk_scale,
    N_REGIONS: tl.constexpr, REGIONS_W: tl.constexpr, Q_RH: tl.constexpr, Q_RW: tl.constexpr,
    K_RH: tl.constexpr, K_RW: tl.constexpr, TOPK: tl.constexpr, D_QK: tl.constexpr,
    D_V: tl.constexpr, K_TILES: tl.constexpr, CHUNK: tl.constexpr, SPLIT: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_DQK: tl.constexpr,
    BLOCK_DV: tl.constexpr, HAS_W: tl.constexpr, MASK_KEYS: tl.constexpr,
    DOT_F32: tl.constexpr, PREC: tl.constexpr,
):
    pid = tl.program_id(0)
    head = tl.program_id(1)
    n_heads = tl.num_programs(1)
    k_tile = pid % K_TILES
    image, kr, seg_lo, seg_hi, n_seg, slot, active = _segment(
        pid // K_TILES, n_groups, n_entries, SORTED, OFFSETS, N_REGIONS, TOPK, CHUNK, SPLIT
    )
    t = k_tile * BLOCK_N + tl.arange(0, BLOCK_N)
    k_row, k_col = token_position(kr, t, REGIONS_W, K_RH, K_RW)
    in_region = t < K_RH * K_RW
    key_ok = in_region
    if MASK_KEYS:
        key_ok = key_ok & (k_row < valid_h) & (k_col < valid_w)
    k_off = offsets(image, k_row, k_col, skb, skh, skw)
    v_off = offsets(image, k_row, k_col, svb, svh, svw)
    k = load_tile(K, k_off, head * D_QK, skc, key_ok, D_QK, BLOCK_DQK, DOT_F32)
    v = load_tile(V, v_off, head * D_V, svc, key_ok, D_V, BLOCK_DV, DOT_F32)

    dk = tl.zeros([BLOCK_N, BLOCK_DQK], tl.float32)
    dv = tl.zeros([BLOCK_N, BLOCK_DV], tl.float32)
    n_rows = (seg_hi - seg_lo) * (Q_RH * Q_RW)
    # query rows of the segment's entries, flattened: (entry, query token)
    for f0 in range(0, n_rows, BLOCK_M):
        row_ok = f0 + tl.arange(0, BLOCK_M) < n_rows
        q, do, lse, delta, w = _entry_rows(
            f0, seg_lo, image, head, n_heads, row_ok, Q, DO, W, LSE, DELTA, ENTRIES, sqb, sqh,
            sqw, sqc, sdob, sdoh, sdow, sdoc, N_REGIONS, REGIONS_W, Q_RH, Q_RW, TOPK, D_QK, D_V,
            BLOCK_M, BLOCK_DQK, BLOCK_DV, HAS_W, DOT_F32,
        )
        s = tl.dot(q, tl.trans(k), input_precision=PREC) * qk_scale  # BLOCK_M, BLOCK_N
        if HAS_W:
            s = s * w[:, None]
        p = tl.where(row_ok[:, None] & key_ok[None, :], tl.exp2(s - lse[:, None]), 0.0)
        dp = tl.dot(do, tl.trans(v), input_precision=PREC)  # BLOCK_M, BLOCK_N
        if HAS_W:
            ds = p * (dp * w[:, None] - delta[:, None]) * w[:, None]
            p = p * w[:, None]
        else:
            ds = p * (dp - delta[:, None])
        dv += tl.dot(tl.trans(p.to(do.dtype)), do, input_precision=PREC)
        dk += tl.dot(tl.trans(ds.to(q.dtype)), q, input_precision=PREC)

    dk_off = offsets(image, k_row, k_col, sdkb, sdkh, sdkw)
    dv_off = offsets(image, k_row, k_col, sdvb, sdvh, sdvw)
    direct = active & (n_seg == 1)
    store_tile(DK, dk_off, head * D_QK, dk * sm_scale, in_region & direct, D_QK, BLOCK_DQK)
    store_tile(DV, dv_off, head * D_V, dv, in_region & direct, D_V, BLOCK_DV)
    if SPLIT:
        split = (t >= 0)[:, None] & active & (n_seg > 1)
        tl.store(PART_K + partial_offsets(slot, head, n_heads, k_tile, K_TILES, BLOCK_N,
                                          BLOCK_DQK), dk, mask=split)
        tl.store(PART_V + partial_offsets(slot, head, n_heads, k_tile, K_TILES, BLOCK_N,
                                          BLOCK_DV), dv, mask=split)


@triton.jit
def dkdv_reduce_kernel(
    PART_K, PART_V, SORTED, OFFSETS, DK, DV, sdkb, sdkh, sdkw, sdvb, sdvh, sdvw,
    n_entries, sm_scale,
    N_REGIONS: tl.constexpr, REGIONS_W: tl.constexpr, K_RH: tl.constexpr, K_RW: tl.constexpr,
    TOPK: tl.constexpr, D_QK: tl.constexpr, D_V: tl.constexpr, K_TILES: tl.constexpr,
    CHUNK: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_DQK: tl.constexpr,
    BLOCK_DV: tl.constexpr,
):
    """Program ``j``: the key region whose first chunk lies in block ``j`` and continues past
    it (if any) sums its partials, first chunk then later chunks, and writes dK and dV."""
    pid = tl.program_id(0)
    head = tl.program_id(1)
    n_heads = tl.num_programs(1)
    j = pid // K_TILES
    k_tile = pid % K_TILES
    s = (j + 1) * CHUNK
    image, kr, lo, hi, active = region_at(s, s < n_entries, SORTED, OFFSETS, N_REGIONS, TOPK)
    active = active & (lo >= j * CHUNK) & (lo < s)
    last = tl.where(active, (hi - 1) // CHUNK, j)
    acc_k = tl.load(PART_K + partial_offsets(2 * j + 1, head, n_heads, k_tile, K_TILES, BLOCK_N,
                                             BLOCK_DQK), mask=active, other=0.0)
    acc_v = tl.load(PART_V + partial_offsets(2 * j + 1, head, n_heads, k_tile, K_TILES, BLOCK_N,
                                             BLOCK_DV), mask=active, other=0.0)
    for m in range(j + 1, last + 1):
        acc_k += tl.load(PART_K + partial_offsets(2 * m, head, n_heads, k_tile, K_TILES,
                                                  BLOCK_N, BLOCK_DQK))
        acc_v += tl.load(PART_V + partial_offsets(2 * m, head, n_heads, k_tile, K_TILES,
                                                  BLOCK_N, BLOCK_DV))
    t = k_tile * BLOCK_N + tl.arange(0, BLOCK_N)
    ok = (t < K_RH * K_RW) & active
    row, col = token_position(kr, t, REGIONS_W, K_RH, K_RW)
    dk_off = offsets(image, row, col, sdkb, sdkh, sdkw)
    dv_off = offsets(image, row, col, sdvb, sdvh, sdvw)
    store_tile(DK, dk_off, head * D_QK, acc_k * sm_scale, ok, D_QK, BLOCK_DQK)
    store_tile(DV, dv_off, head * D_V, acc_v, ok, D_V, BLOCK_DV)
