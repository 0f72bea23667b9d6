"""Independent brute-force oracles for Bi-Level Routing Attention, used only by the tests.

They never gather: every query attends to *all* tokens through a dense ``[Nq, Nk]`` matrix that
is masked (and, for soft routing, weighted) from the routing. Region means use ``avg_pool2d``
rather than the library's reshape + mean, and KV downsampling loops over regions one by one.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def token_regions(h: int, w: int, regions: tuple[int, int]) -> torch.Tensor:
    """Region id of every token of an ``h x w`` grid (raster order), ``[h*w]`` long."""
    rh, rw = regions
    ys = torch.arange(h) // (h // rh)
    xs = torch.arange(w) // (w // rw)
    return (ys[:, None] * rw + xs[None, :]).reshape(-1)


def dense_routed_attention(q, k, v, index, regions, num_heads, scale, weight=None):
    """NHWC ``q [B,Hq,Wq,Cqk]``, ``k [B,Hk,Wk,Cqk]``, ``v [B,Hk,Wk,Cv]`` -> ``[B,Hq,Wq,Cv]``."""
    b, hq, wq, cqk = q.shape
    _, hk, wk, cv = v.shape
    r = regions[0] * regions[1]
    m = num_heads
    rq = token_regions(hq, wq, regions)
    rk = token_regions(hk, wk, regions)
    routed = torch.zeros(b, r, r, dtype=q.dtype)
    vals = weight.to(q.dtype) if weight is not None else torch.ones(index.shape, dtype=q.dtype)
    routed = routed.scatter(2, index, vals)  # B, R, R: weight of key region j for query region i
    allowed = torch.zeros(b, r, r, dtype=torch.bool).scatter(2, index, True)
    mult = routed[:, rq][:, :, rk]  # B, Nq, Nk
    mask = allowed[:, rq][:, :, rk]
    qf = q.reshape(b, hq * wq, m, cqk // m).transpose(1, 2)
    kf = k.reshape(b, hk * wk, m, cqk // m).transpose(1, 2)
    vf = v.reshape(b, hk * wk, m, cv // m).transpose(1, 2)
    scores = (qf * scale) @ kf.transpose(-1, -2)  # B, m, Nq, Nk
    if weight is not None:
        scores = scores * mult[:, None]
    scores = scores.masked_fill(~mask[:, None], float("-inf"))
    p = torch.softmax(scores, dim=-1)
    if weight is not None:
        p = p * mult[:, None]
    out = p @ vf  # B, m, Nq, dv
    return out.transpose(1, 2).reshape(b, hq, wq, cv)


def region_means_pool(x_nhwc, region_size):
    """Region means with avg_pool2d (ceil mode, padding excluded): ``[B, R, C]``."""
    x = x_nhwc.permute(0, 3, 1, 2)
    pooled = F.avg_pool2d(x, region_size, ceil_mode=True, count_include_pad=False)
    return pooled.flatten(2).transpose(1, 2)


def legacy_bra_oracle(layer, x, soft_override=None):
    """Output of a ``BiLevelRoutingAttention`` recomputed densely from its parameters.

    Returns ``(out [B,H,W,C], weights, index)``.
    """
    n, h_in, w_in, c = x.shape
    win = layer.n_win
    pad_b, pad_r = (-h_in) % win, (-w_in) % win
    x = F.pad(x, (0, 0, 0, pad_r, 0, pad_b))
    _, h, w, _ = x.shape
    qkv = x @ layer.qkv.qkv.weight.t() + layer.qkv.qkv.bias
    q, k, v = qkv.split([layer.qk_dim, layer.qk_dim, layer.dim], dim=-1)
    rs = (h // win, w // win)
    q_r, k_r = region_means_pool(q, rs), region_means_pool(k, rs)
    if not layer.diff_routing:
        q_r, k_r = q_r.detach(), k_r.detach()
    if isinstance(layer.router.emb, torch.nn.Linear):
        q_r, k_r = layer.router.emb(q_r), layer.router.emb(k_r)
    logits = torch.einsum("brc,bsc->brs", q_r * layer.scale, k_r)
    top, index = torch.topk(logits, layer.topk, dim=-1)
    weights = torch.softmax(top, dim=-1)
    if isinstance(layer.kv_down, torch.nn.Identity):
        k_a, v_a = k, v
    else:  # pool each region on its own
        rows = []
        for i in range(win):
            cols = []
            for j in range(win):
                tile = torch.cat([k, v], -1)[:, i * rs[0] : (i + 1) * rs[0], j * rs[1] : (j + 1) * rs[1]]
                cols.append(layer.kv_down(tile.permute(0, 3, 1, 2)).permute(0, 2, 3, 1))
            rows.append(torch.cat(cols, dim=2))
        kv = torch.cat(rows, dim=1)
        k_a, v_a = kv.split([layer.qk_dim, layer.dim], dim=-1)
    soft = layer.soft_routing if soft_override is None else soft_override
    out = dense_routed_attention(
        q, k_a, v_a, index, (win, win), layer.num_heads, layer.scale, weights if soft else None
    )
    if layer.lepe is not None:
        out = out + layer.lepe(v.permute(0, 3, 1, 2).contiguous()).permute(0, 2, 3, 1)
    if isinstance(layer.wo, torch.nn.Linear):
        out = layer.wo(out)
    return out[:, :h_in, :w_in], weights, index


def nchw_bra_oracle(layer, x):
    """Output of a ``BRA2d`` recomputed densely (reference NCHW semantics). ``[B, C, H, W]``."""
    b, c, h, w = x.shape
    rs = (max(h // layer.n_win, 1), max(w // layer.n_win, 1))
    qkv = F.conv2d(x, layer.qkv_linear.weight, layer.qkv_linear.bias)
    q, k, v = qkv.chunk(3, dim=1)
    q_r = F.avg_pool2d(q.detach(), rs, ceil_mode=True, count_include_pad=False)
    k_r = F.avg_pool2d(k.detach(), rs, ceil_mode=True, count_include_pad=False)
    grid = tuple(q_r.shape[-2:])
    aff = q_r.flatten(2).transpose(1, 2) @ k_r.flatten(2)
    topk = min(layer.topk, aff.shape[-1])
    _, index = torch.topk(aff, topk, dim=-1)
    hp, wp = grid[0] * rs[0], grid[1] * rs[1]
    pad = (0, wp - w, 0, hp - h)
    qp, kp, vp = (F.pad(t, pad).permute(0, 2, 3, 1) for t in (q, k, v))
    out = dense_routed_attention(qp, kp, vp, index, grid, layer.num_heads, layer.scale)
    out = out[:, :h, :w].permute(0, 3, 1, 2)
    if layer.lepe is not None:
        out = out + layer.lepe(v)
    return layer.output_linear(out), index
