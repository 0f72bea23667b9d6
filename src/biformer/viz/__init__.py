"""Looking inside BiFormer: routing capture and pictures, training curves.

* ``capture_routing(model, images)``: the routing (indices, weights, geometry) of every Bi-Level
  Routing Attention layer for one forward pass, through forward hooks (no model copy);
  ``routing_hooks(model)`` does the same for any forward run inside a ``with`` block;
* ``query_attention`` / ``attention_map``: a query token's attention over its routed tokens;
* ``render_routing`` / ``draw_panel``: the routed regions and the attention over an image
  (the ``biformer viz`` command);
* ``biformer plot RUN_DIR``: loss and accuracy curves of a training run (``viz.curves``).

Drawing needs the ``viz`` extra (matplotlib, scikit-image for the built-in photos).
"""

from .capture import (
    RoutingRecord,
    attention_map,
    capture_routing,
    query_attention,
    routing_hooks,
    routing_modules,
)
from .draw import QUERY_COLOR, ROUTED_COLOR, PanelPlace, RoutingPicture, draw_panel, render_routing

__all__ = [
    "QUERY_COLOR",
    "ROUTED_COLOR",
    "PanelPlace",
    "RoutingPicture",
    "RoutingRecord",
    "attention_map",
    "capture_routing",
    "draw_panel",
    "query_attention",
    "render_routing",
    "routing_hooks",
    "routing_modules",
]
