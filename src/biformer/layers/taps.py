"""Hook points: identity modules whose forward hooks see intermediate results."""

from __future__ import annotations

from torch import Tensor, nn

__all__ = ["RoutingTap"]


class RoutingTap(nn.Module):
    """Passes the routing through unchanged; register a forward hook to observe it.

    ``forward(weights, index, n_win)`` receives ``[B, R, topk]`` routing weights and key-region
    indices and the regions per side ``n_win = (Rh, Rw)``; the hook's ``output`` is
    ``(weights, index, n_win)``.
    It holds no parameters, so state dicts are unchanged.
    """

    def forward(
        self, weights: Tensor, index: Tensor, n_win: tuple[int, int]
    ) -> tuple[Tensor, Tensor, tuple[int, int]]:
        return weights, index, n_win
