"""Transposed routing: for every key region, the routing entries that chose it.

The forward routing says, for query region ``r`` of image ``b``, which key regions it attends to:
``index[b, r, slot]``. Gradients of keys and values need the opposite view: for key region ``kr``
of image ``b``, every ``(query region, slot)`` pair that routed to it. Writing the gradients
region by region from that list needs no atomic adds, so the backward pass is deterministic.

The list is built per image with one stable sort on the device (no host synchronisation):
entries of image ``b`` are numbered ``e = r * topk + slot``; sorting their routed ids groups them
by key region, and stability keeps them in ascending ``e`` (query region, then slot) order inside
each group. Key region ``kr`` of image ``b`` owns ``entries[b, offsets[b, kr]:offsets[b, kr + 1]]``;
a region chosen by no query has an empty range. Repeated ids in one routing row (possible with
hand-made routings) give two entries. An id outside ``[0, R)`` sorts before the first or after
the last region's range, so no key region owns it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["TransposedRouting", "transpose_routing"]


@dataclass(frozen=True)
class TransposedRouting:
    """Per-image compressed (CSR) transposed routing of ``[B, R, topk]`` routing entries.

    Attributes:
        sorted_regions: ``[B, R * topk]`` routed key-region id of each entry below, ascending.
        entries: ``[B, R * topk]`` int64 entries ``r * topk + slot`` (local to the image),
            grouped by key region, ascending inside each group.
        offsets: ``[B, R + 1]`` int32; key region ``kr`` of image ``b`` owns
            ``entries[b, offsets[b, kr]:offsets[b, kr + 1]]``.
    """

    sorted_regions: Tensor
    entries: Tensor
    offsets: Tensor


_bounds: dict[tuple, Tensor] = {}


def _region_bounds(batch: int, regions: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    """``[B, R + 1]`` ids ``0 .. R`` per image (cached: one per shape and device)."""
    key = (batch, regions, dtype, device)
    bounds = _bounds.get(key)
    if bounds is None:
        row = torch.arange(regions + 1, dtype=dtype, device=device)
        bounds = _bounds[key] = row.expand(batch, regions + 1).contiguous()
    return bounds


def transpose_routing(index: Tensor) -> TransposedRouting:
    """Build the transposed routing of ``index``.

    Args:
        index: ``[B, R, topk]`` integer (int32 or int64) routed key-region ids per query
            region; ids outside ``[0, R)`` belong to no key region.

    Returns:
        A ``TransposedRouting`` on ``index``'s device, built without host synchronisation.
    """
    b, r, topk = index.shape
    sorted_regions, entries = torch.sort(index.reshape(b, r * topk), dim=-1, stable=True)
    bounds = _region_bounds(b, r, sorted_regions.dtype, index.device)
    offsets = torch.searchsorted(sorted_regions, bounds, out_int32=True)
    return TransposedRouting(sorted_regions=sorted_regions, entries=entries, offsets=offsets)
