"""Pinning the routed-attention backend of every BRA layer of a model (the per-layer override)."""

from __future__ import annotations

from torch import nn

from .bra import BiLevelRoutingAttention
from .bra2d import BRA2d
from .checks import check_backend

__all__ = ["set_backend"]


def set_backend(module: nn.Module, backend: str | None) -> int:
    """Set the ``backend`` attribute of every BRA layer inside ``module`` (itself included).

    ``backend`` is a backend name, or None to follow ``biformer.ops.use_backend`` and the
    process default again. Returns the number of layers changed. This is the per-layer level of
    the rule in ``biformer.ops.dispatch``: it wins over ``use_backend`` and the default.
    """
    backend = check_backend(backend)
    layers = [m for m in module.modules() if isinstance(m, (BiLevelRoutingAttention, BRA2d))]
    for layer in layers:
        layer.backend = backend
    return len(layers)
