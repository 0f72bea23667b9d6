"""Region-to-region routing: region affinity and top-k selection."""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["topk_routing"]


def topk_routing(
    query_regions: Tensor,
    key_regions: Tensor,
    *,
    topk: int,
    scale: float | None = None,
) -> tuple[Tensor, Tensor]:
    """Keep, for every query region, the ``topk`` key regions of highest affinity.

    Args:
        query_regions: ``[B, R, C]`` region-level queries (usually region means).
        key_regions: ``[B, R, C]`` region-level keys.
        topk: number of key regions kept per query region, ``1 <= topk <= R``.
        scale: multiplies the queries before the affinity product (the official modules use
            ``qk_dim ** -0.5``); ``None`` skips the multiplication (same ranking).

    Returns:
        ``(weights, index)``, both ``[B, R, topk]``: the softmax of the kept affinities
        (used by soft routing) and the key-region indices, ordered by decreasing affinity.
    """
    num_regions = key_regions.shape[-2]
    if not 1 <= topk <= num_regions:
        raise ValueError(
            f"topk={topk} must be between 1 and the number of regions ({num_regions}); "
            "lower topk or use more regions (n_win)"
        )
    if scale is not None:
        query_regions = query_regions * scale
    logits = query_regions @ key_regions.transpose(-2, -1)  # B, R, R
    top_logits, index = torch.topk(logits, k=topk, dim=-1)
    return torch.softmax(top_logits, dim=-1), index
