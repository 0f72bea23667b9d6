"""Reference backend: the official gather-based semantics, the oracle for every other backend.

It copies every routed key region ``topk`` times (``[B, R, topk, Lk, C]``) and materialises the
full attention matrix ``[B*R, heads, Lq, topk*Lk]``, exactly as the official implementation does.
Memory grows with ``batch x regions x topk``: use the ``chunked`` backend for large inputs.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..checks import Problem
from ..regions import from_regions, to_regions
from .masking import key_bias

NAME = "reference"


def can_run(problem: Problem) -> list[str]:
    """The reference runs everywhere PyTorch runs."""
    return []


def _gather_regions(x: Tensor, index: Tensor) -> Tensor:
    """``x`` ``[B, R, L, C]``, ``index`` ``[B, R, topk]`` -> ``[B, R, topk, L, C]`` (a copy)."""
    b, r, length, c = x.shape
    topk = index.shape[-1]
    expanded = x.view(b, 1, r, length, c).expand(-1, r, -1, -1, -1)  # no copy
    idx = index.view(b, r, topk, 1, 1).expand(-1, -1, -1, length, c)
    return torch.gather(expanded, dim=2, index=idx)


def routed_attention_with_weights(
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
) -> tuple[Tensor, Tensor]:
    """Routed attention that also returns the attention matrix.

    Returns:
        ``(out, attn)``: ``out`` is NHWC ``[B, Hq, Wq, Cv]``; ``attn`` is
        ``[B*R, heads, Lq, topk*Lk]`` (the layout of the official ``attn_weight``), where
        ``Lq``/``Lk`` are the tokens of a query/key region in raster order and the key axis runs
        over the routed regions in ``index`` order.
    """
    b, hq, wq, _ = query.shape
    r = n_win[0] * n_win[1]
    topk = index.shape[-1]
    m = num_heads
    q = to_regions(query, n_win)  # B, R, Lq, Cqk
    k = to_regions(key, n_win)  # B, R, Lk, Cqk
    v = to_regions(value, n_win)  # B, R, Lk, Cv
    lq, lk = q.shape[2], k.shape[2]
    dqk, dv = query.shape[-1] // m, value.shape[-1] // m  # explicit: an empty batch has no -1
    index = index.long()
    k_sel = _gather_regions(k, index)  # B, R, topk, Lk, Cqk
    v_sel = _gather_regions(v, index)  # B, R, topk, Lk, Cv
    if weight is not None:
        w = weight.to(k_sel.dtype).view(b, r, topk, 1, 1)
        k_sel = w * k_sel
        v_sel = w * v_sel
    # heads: channels are (head, head_dim)
    k_sel = k_sel.reshape(b * r, topk * lk, m, dqk).permute(0, 2, 3, 1)  # BR, m, d, topk*Lk
    v_sel = v_sel.reshape(b * r, topk * lk, m, dv).transpose(1, 2)  # BR, m, topk*Lk, dv
    q = q.reshape(b * r, lq, m, dqk).transpose(1, 2)  # BR, m, Lq, d
    logits = (q * scale) @ k_sel  # BR, m, Lq, topk*Lk
    if key_valid is not None:
        bias = key_bias(key.shape[1:3], key_valid, n_win, logits.dtype, logits.device)  # R, L
        bias = bias[index.reshape(-1)].reshape(b * r, 1, 1, topk * lk)
        logits = logits + bias
    attn = torch.softmax(logits, dim=-1)
    out = attn @ v_sel  # BR, m, Lq, dv
    out = out.transpose(1, 2).reshape(b, r, lq, m * dv)
    return from_regions(out, n_win, (hq, wq)), attn


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
) -> Tensor:
    """Routed attention, NHWC in and out; see ``biformer.ops.routed_attention``."""
    out, _ = routed_attention_with_weights(
        query,
        key,
        value,
        index,
        weight,
        n_win=n_win,
        num_heads=num_heads,
        scale=scale,
        key_valid=key_valid,
    )
    return out
