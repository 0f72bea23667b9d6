"""Parameter-free Bi-Level Routing Attention operators and their backends."""

from .dispatch import (
    BACKENDS,
    BackendUnavailable,
    available_backends,
    backend_reasons,
    choose_backend,
    get_default_backend,
    set_default_backend,
    use_backend,
)
from .functional import bi_level_routing_attention, routed_attention, routed_attention_with_weights
from .regions import from_regions, region_mean, to_regions
from .routing import topk_routing

__all__ = [
    "BACKENDS",
    "BackendUnavailable",
    "available_backends",
    "backend_reasons",
    "bi_level_routing_attention",
    "choose_backend",
    "from_regions",
    "get_default_backend",
    "region_mean",
    "routed_attention",
    "routed_attention_with_weights",
    "set_default_backend",
    "to_regions",
    "topk_routing",
    "use_backend",
]

from .dispatch import _load_all  # noqa: E402

_load_all()  # backends are imported once here, so dispatch stays a lookup under torch.compile
