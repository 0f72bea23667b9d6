"""Hook points: identity modules whose forward hooks see intermediate results."""

from __future__ import annotations

from torch import Tensor, nn

__all__ = ["RoutingTap"]


class RoutingTap(nn.Module):
    """Passes the routing through unchanged; register a forward hook to observe it.

    ``forward(weights, index)`` receives ``[B, R, topk]`` routing weights and key-region indices
    and the region grid ``(Rh, Rw)``; the hook's ``output`` is ``(weights, index, regions)``.
    It holds no parameters, so state dicts are unchanged.
    """

    def forward(
        self, weights: Tensor, index: Tensor, regions: tuple[int, int]
    ) -> tuple[Tensor, Tensor, tuple[int, int]]:
        return weights, index, regions
