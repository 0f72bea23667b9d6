"""Transposed routing: for every key region, the routing entries that chose it.

The forward routing says, for query region ``r`` of image ``b``, which key regions it attends to:
``index[b, r, slot]``. Gradients of keys and values need the opposite view: for key region ``kv``,
every ``(query region, slot)`` pair that routed to it. Writing the gradients region by region from
that list needs no atomic adds, so the backward pass is deterministic.

The list is built with one stable sort on the device (no host synchronisation): entries are
numbered ``e = g * topk + slot`` with the global query region ``g = b * R + r``; sorting the
global key-region id of every entry groups the entries by key region, and stability keeps them in
ascending ``e`` (query region, then slot) order inside each group. Key region ``kv`` owns
``entries[offsets[kv]:offsets[kv + 1]]``; a region chosen by no query has an empty range. Repeated
ids in one routing row (possible with hand-made routings) simply give two entries.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["TransposedRouting", "transpose_routing"]


@dataclass(frozen=True)
class TransposedRouting:
    """Compressed (CSR) transposed routing of ``G = B * R`` regions.

    Attributes:
        entries: ``[G * topk]`` int32 routing entries ``g * topk + slot``, grouped by key region
            (ascending key region), ascending inside each group.
        offsets: ``[G + 1]`` int32; key region ``kv`` (global id ``b * R + region``) owns
            ``entries[offsets[kv]:offsets[kv + 1]]``.
        topk: routed regions per query region (to decode ``g, slot = divmod(entry, topk)``).
    """

    entries: Tensor
    offsets: Tensor
    topk: int

    @property
    def counts(self) -> Tensor:
        """``[G]`` number of entries that chose each key region."""
        return self.offsets[1:] - self.offsets[:-1]

    def selectors(self, kv: int) -> list[tuple[int, int]]:
        """``(query region g, slot)`` pairs of key region ``kv`` (host side; for tests and debugging)."""
        lo, hi = int(self.offsets[kv]), int(self.offsets[kv + 1])
        return [divmod(int(e), self.topk) for e in self.entries[lo:hi].tolist()]


def transpose_routing(index: Tensor) -> TransposedRouting:
    """Build the transposed routing of ``index``.

    Args:
        index: ``[B, R, topk]`` integer routed key-region ids per query region, in ``[0, R)``.

    Returns:
        A ``TransposedRouting`` on ``index``'s device, built without host synchronisation.
    """
    if not isinstance(index, Tensor) or index.dim() != 3:
        raise ValueError(
            "index must be a [batch, regions, topk] tensor, got "
            f"{tuple(index.shape) if isinstance(index, Tensor) else type(index).__name__}"
        )
    if index.dtype.is_floating_point or index.dtype == torch.bool:
        raise TypeError(f"index must be an integer tensor, got {index.dtype}")
    b, r, topk = index.shape
    groups = b * r
    device = index.device
    image = torch.arange(b, device=device, dtype=torch.int64).view(b, 1, 1) * r
    key_region = (index.to(torch.int64) + image).reshape(-1)  # B*R*topk global key-region ids
    sorted_keys, order = torch.sort(key_region, stable=True)
    bounds = torch.arange(groups + 1, device=device, dtype=torch.int64)
    offsets = torch.searchsorted(sorted_keys, bounds)  # first entry of each key region
    return TransposedRouting(
        entries=order.to(torch.int32), offsets=offsets.to(torch.int32), topk=topk
    )
