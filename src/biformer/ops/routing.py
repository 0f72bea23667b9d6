"""Region-to-region routing: region affinity and top-k selection."""

from __future__ import annotations

import torch
from torch import Tensor

from .arguments import check_scale, check_topk
from .checks import check_feature_maps

__all__ = ["topk_routing"]


def topk_routing(
    query_regions: Tensor,
    key_regions: Tensor,
    *,
    topk: int,
    scale: float | None = None,
    validate: bool = True,
) -> tuple[Tensor, Tensor]:
    """Keep, for every query region, the ``topk`` key regions of highest affinity.

    Args:
        query_regions: ``[B, Rq, C]`` region-level queries (usually region means).
        key_regions: ``[B, R, C]`` region-level keys (same batch, dtype, device and channels).
        topk: number of key regions kept per query region, ``1 <= topk <= R``.
        scale: multiplies the queries before the affinity product (the official modules use
            ``qk_dim ** -0.5``); ``None`` skips the multiplication (same ranking).
        validate: check the arguments (the default); ``False`` skips the checks.

    Returns:
        ``(weights, index)``, both ``[B, Rq, topk]``: the softmax of the kept affinities
        (used by soft routing) and the key-region indices, ordered by decreasing affinity.
    """
    if validate:
        _check_routing(query_regions, key_regions, topk, scale)
    if scale is not None:
        query_regions = query_regions * scale
    logits = query_regions @ key_regions.transpose(-2, -1)  # B, Rq, R
    top_logits, index = torch.topk(logits, k=topk, dim=-1)
    return torch.softmax(top_logits, dim=-1), index


def _check_routing(query_regions: Tensor, key_regions: Tensor, topk: object, scale: object):
    named = (("query_regions", query_regions), ("key_regions", key_regions))
    check_feature_maps(named, 3, "[batch, num_regions, channels]")
    (b, _, c), (bk, num_regions, ck) = query_regions.shape, key_regions.shape
    if b != bk:
        raise ValueError(
            f"batch sizes differ: query_regions has {b}, key_regions {bk}; pass one batch "
            "size (no broadcasting)"
        )
    if c != ck or c < 1:
        raise ValueError(
            f"query_regions and key_regions need the same channel count (>= 1), got {c} and {ck}"
        )
    check_topk(topk, num_regions)
    if scale is not None:
        check_scale(scale)
