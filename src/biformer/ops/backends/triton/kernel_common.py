"""Triton device functions shared by the routed-attention kernels (inlined when compiled).

Layout: token ``i`` of region ``r`` (raster order) of image ``b`` sits at row
``(r // REGIONS_W) * RH + i // RW`` and column ``(r % REGIONS_W) * RW + i % RW`` of an NHWC
tensor addressed as ``base + b*sb + row*sh + col*sw + channel*sc``; channels are
``(head, head_dim)``. Region geometry (``N_REGIONS``, ``REGIONS_W``, region sides, ``TOPK``,
head dims) is compile-time, so the index arithmetic divides by constants.
"""

import triton
import triton.language as tl
from triton import knobs


def device_function(fn):
    """``triton.jit`` for a device function. Under the interpreter a plain Python function: the
    interpreter runs it alike, but re-patches ``triton.language`` (about 3 ms) on every call of
    a jitted device function."""
    return fn if knobs.runtime.interpret else triton.jit(fn)


@device_function
def token_position(region, tok, REGIONS_W: tl.constexpr, RH: tl.constexpr, RW: tl.constexpr):
    """Row and column of tokens ``tok`` of ``region`` (raster order in both)."""
    return (region // REGIONS_W) * RH + tok // RW, (region % REGIONS_W) * RW + tok % RW


@device_function
def offsets(image, row, col, sb, sh, sw):
    """Element offsets of (``image``, ``row``, ``col``) in a tensor of strides ``sb, sh, sw``."""
    return image.to(tl.int64) * sb + row * sh + col * sw


@device_function
def load_tile(P, offsets, ch0, sc, ok, D: tl.constexpr, BLOCK_D: tl.constexpr,
              F32: tl.constexpr):
    """``[len(offsets), BLOCK_D]`` rows of channels ``ch0 .. ch0 + D`` (zeros where masked)."""
    offs = tl.arange(0, BLOCK_D)
    x = tl.load(P + offsets[:, None] + (ch0 + offs)[None, :] * sc,
                mask=ok[:, None] & (offs < D)[None, :], other=0.0)
    if F32:
        x = x.to(tl.float32)
    return x


@device_function
def store_tile(P, offsets, ch0, x, ok, D: tl.constexpr, BLOCK_D: tl.constexpr):
    """Store rows ``x`` at channels ``ch0 .. ch0 + D`` of a channel-contiguous tensor."""
    offs = tl.arange(0, BLOCK_D)
    tl.store(P + offsets[:, None] + (ch0 + offs)[None, :], x.to(P.dtype.element_ty),
             mask=ok[:, None] & (offs < D)[None, :])


@device_function
def query_rows(pid, n_groups, Q_TOKENS: tl.constexpr, Q_TILES: tl.constexpr, GQ: tl.constexpr,
               BLOCK_M: tl.constexpr):
    """Rows of a forward/dQ program: ``GQ`` whole regions, or one ``BLOCK_M`` tile of one.

    Returns ``(g_first, q_tile, lr, tok, row_ok)``: the first global region, the query tile,
    and per row its local region, token and validity.
    """
    offs = tl.arange(0, BLOCK_M)
    if GQ == 1:
        g_first = pid // Q_TILES
        q_tile = pid % Q_TILES
        tok = q_tile * BLOCK_M + offs
        lr = offs * 0
        row_ok = tok < Q_TOKENS
    else:
        g_first = pid * GQ
        q_tile = pid * 0
        lr = offs // Q_TOKENS
        tok = offs % Q_TOKENS
        row_ok = (lr < GQ) & (g_first + lr < n_groups)
    return g_first, q_tile, lr, tok, row_ok


@device_function
def query_block(pid, head, n_groups, Q, sqb, sqh, sqw, sqc, N_REGIONS: tl.constexpr,
                REGIONS_W: tl.constexpr, Q_RH: tl.constexpr, Q_RW: tl.constexpr,
                D_QK: tl.constexpr, Q_TILES: tl.constexpr, GQ: tl.constexpr,
                BLOCK_M: tl.constexpr, BLOCK_DQK: tl.constexpr, DOT_F32: tl.constexpr):
    """The query rows of a forward/dQ program and their query tile ``[BLOCK_M, BLOCK_DQK]``.

    Returns ``(q, g_first, q_tile, lr, tok, row_ok, image, row, col)`` (see ``query_rows``;
    ``g_first + lr`` is each row's global region, ``image``, ``row``, ``col`` its position).
    """
    g_first, q_tile, lr, tok, row_ok = query_rows(pid, n_groups, Q_RH * Q_RW, Q_TILES, GQ,
                                                  BLOCK_M)
    g = g_first + lr
    image = g // N_REGIONS
    row, col = token_position(g % N_REGIONS, tok, REGIONS_W, Q_RH, Q_RW)
    q = load_tile(Q, offsets(image, row, col, sqb, sqh, sqw), head * D_QK, sqc, row_ok, D_QK,
                  BLOCK_DQK, DOT_F32)
    return q, g_first, q_tile, lr, tok, row_ok, image, row, col


@device_function
def routed_key_tile(j0, g_first, n_groups, head, IDX, W, K, V, skb, skh, skw, skc,
                    svb, svh, svw, svc, valid_h, valid_w,
                    N_REGIONS: tl.constexpr, REGIONS_W: tl.constexpr, K_RH: tl.constexpr,
                    K_RW: tl.constexpr, TOPK: tl.constexpr, D_QK: tl.constexpr,
                    D_V: tl.constexpr, GQ: tl.constexpr, BLOCK_N: tl.constexpr,
                    BLOCK_DQK: tl.constexpr, BLOCK_DV: tl.constexpr, HAS_W: tl.constexpr,
                    MASK_KEYS: tl.constexpr, DOT_F32: tl.constexpr):
    """Keys ``j0 .. j0 + BLOCK_N`` of the flat list ``(local region, slot, token)`` of a program.

    A routed id outside ``[0, N_REGIONS)`` makes its keys masked (never read). Returns
    ``(k, v, w, key_ok, klr, slot)``: key and value tiles, the routing weight per key (ones
    without soft routing), validity, local query region and slot per key.
    """
    k_tokens = K_RH * K_RW
    j = j0 + tl.arange(0, BLOCK_N)
    klr = j // (TOPK * k_tokens)
    slot = (j // k_tokens) % TOPK
    t = j % k_tokens
    kg = g_first + klr
    key_ok = (klr < GQ) & (kg < n_groups)
    entry = kg * TOPK + slot
    kreg = tl.load(IDX + entry, mask=key_ok, other=-1)
    key_ok = key_ok & (kreg >= 0) & (kreg < N_REGIONS)
    image = kg // N_REGIONS
    row, col = token_position(kreg, t, REGIONS_W, K_RH, K_RW)
    k_off = offsets(image, row, col, skb, skh, skw)
    v_off = offsets(image, row, col, svb, svh, svw)
    if MASK_KEYS:
        key_ok = key_ok & (row < valid_h) & (col < valid_w)
    k = load_tile(K, k_off, head * D_QK, skc, key_ok, D_QK, BLOCK_DQK, DOT_F32)
    v = load_tile(V, v_off, head * D_V, svc, key_ok, D_V, BLOCK_DV, DOT_F32)
    if HAS_W:
        w = tl.load(W + entry, mask=key_ok, other=0.0).to(tl.float32)
    else:
        w = tl.full([BLOCK_N], 1.0, tl.float32)
    return k, v, w, key_ok, klr, slot


@device_function
def pair_mask(row_ok, key_ok, lr, klr, GQ: tl.constexpr):
    """Valid (query row, key) pairs; packed regions only see their own keys."""
    ok = row_ok[:, None] & key_ok[None, :]
    if GQ > 1:
        ok = ok & (lr[:, None] == klr[None, :])
    return ok


@device_function
def region_range(image, kr, OFFSETS, N_REGIONS: tl.constexpr, TOPK: tl.constexpr):
    """``[lo, hi)``: positions in the flat sorted entry list of key region ``kr`` of ``image``."""
    base = image * (N_REGIONS + 1) + kr
    start = image * (N_REGIONS * TOPK)
    return start + tl.load(OFFSETS + base), start + tl.load(OFFSETS + base + 1)


@device_function
def region_at(s, ok, SORTED, OFFSETS, N_REGIONS: tl.constexpr, TOPK: tl.constexpr):
    """The key region owning sorted position ``s``: ``(image, kr, lo, hi, ok)``; ``ok`` is False
    where ``s`` was invalid or its routed id lies outside ``[0, N_REGIONS)``."""
    s_safe = tl.where(ok, s, 0)
    x = tl.load(SORTED + s_safe)
    ok = ok & (x >= 0) & (x < N_REGIONS)
    image = s_safe // (N_REGIONS * TOPK)
    kr = tl.where(ok, x, 0)
    lo, hi = region_range(image, kr, OFFSETS, N_REGIONS, TOPK)
    return image, kr, lo, hi, ok



@device_function
def partial_offsets(slot, head, n_heads, k_tile, K_TILES: tl.constexpr, BLOCK_N: tl.constexpr,
                    BLOCK_D: tl.constexpr):
    """Offsets of one ``[BLOCK_N, BLOCK_D]`` fp32 partial in ``[slots, heads, K_TILES*BLOCK_N,
    BLOCK_D]``."""
    rows = (slot * n_heads + head).to(tl.int64) * (K_TILES * BLOCK_N) + k_tile * BLOCK_N
    rows = rows + tl.arange(0, BLOCK_N)
    return rows[:, None] * BLOCK_D + tl.arange(0, BLOCK_D)[None, :]
