"""Routing pictures: routed-region outlines and token attention over the image.

Panels are drawn pixel by pixel (numpy, no antialiasing), so every outline pixel sits exactly
where the routing says; matplotlib (Agg) only places the panels unscaled on the page and writes
the titles. In a panel, for one query point and one BRA layer:

* the query's region is outlined in ``QUERY_COLOR`` (magenta), the regions it is routed to in
  ``ROUTED_COLOR`` (cyan); a magenta cross marks the query point;
* inside the routed regions, the heat map (``inferno``) is the query token's attention over its
  routed key tokens, averaged over heads and stretched per panel from its minimum (darkest) to
  its maximum (brightest); everything else is dimmed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from torch import Tensor

from ..errors import require
from .capture import RoutingRecord, attention_map

__all__ = [
    "QUERY_COLOR",
    "ROUTED_COLOR",
    "PanelPlace",
    "RoutingPicture",
    "draw_panel",
    "render_routing",
]

ROUTED_COLOR = (0, 255, 255)
QUERY_COLOR = (255, 0, 255)
_DIM = 0.4  # brightness kept outside the routed regions
_HEAT_ALPHA = 0.6


def _border(canvas: np.ndarray, box: tuple[int, int, int, int], color: tuple[int, int, int],
            line: int) -> None:
    """Paint the inner border (``line`` pixels wide) of ``box`` = (top, left, bottom, right)."""
    top, left, bottom, right = box
    if bottom <= top or right <= left:
        return  # region entirely in the padding: nothing on the image
    canvas[top : min(top + line, bottom), left:right] = color
    canvas[max(bottom - line, top) : bottom, left:right] = color
    canvas[top:bottom, left : min(left + line, right)] = color
    canvas[top:bottom, max(right - line, left) : right] = color


def _scaled(box: tuple[int, int, int, int], zoom: int) -> tuple[int, int, int, int]:
    return tuple(v * zoom for v in box)  # type: ignore[return-value]


def _shaded(base: np.ndarray, record: RoutingRecord, routed: list[int],
            token: tuple[int, int], batch: int, heat: bool) -> np.ndarray:
    """``base`` ``[H, W, 3]`` float dimmed outside the routed regions, with the query token's
    attention as a heat map inside them (when the record kept its queries and keys)."""
    h, w = base.shape[:2]
    inside = np.zeros((h, w), dtype=bool)
    for region in routed:
        top, left, bottom, right = record.region_box(region)
        inside[top:bottom, left:right] = True
    out = base * _DIM
    if not (heat and record.query is not None):
        out[inside] = base[inside]
        return out
    amap = attention_map(record, token, batch=batch).numpy()  # map tokens
    sy, sx = record.stride
    rows = np.minimum((np.arange(h) // sy).astype(int), amap.shape[0] - 1)
    cols = np.minimum((np.arange(w) // sx).astype(int), amap.shape[1] - 1)
    pix = amap[rows][:, cols]  # H, W
    lo, hi = (float(pix[inside].min()), float(pix[inside].max())) if inside.any() else (0, 1)
    pix = (pix - lo) / (hi - lo) if hi > lo else np.ones_like(pix)
    from matplotlib import colormaps

    colors = colormaps["inferno"](pix)[..., :3] * 255.0
    blended = (1 - _HEAT_ALPHA) * base + _HEAT_ALPHA * colors
    out[inside] = blended[inside]
    return out


def draw_panel(
    image: np.ndarray,
    record: RoutingRecord,
    point: tuple[int, int],
    *,
    batch: int = 0,
    zoom: int = 1,
    line: int = 2,
    heat: bool = True,
) -> np.ndarray:
    """One panel: ``image`` ``[H, W, 3]`` uint8 (the model input's pixels, ``H, W`` =
    ``record.image_size``) with the routing of query pixel ``point = (y, x)``.

    Returns ``[H * zoom, W * zoom, 3]`` uint8. The heat map needs a record captured with
    ``keep_qk=True`` (otherwise, or with ``heat=False``, only the outlines are drawn).
    """
    image = np.asarray(image)
    h, w = record.image_size
    if image.shape != (h, w, 3) or image.dtype != np.uint8:
        raise ValueError(
            f"image must be [{h}, {w}, 3] uint8 (the model input's size), got "
            f"{image.shape} {image.dtype}"
        )
    y, x = point
    if not (0 <= y < h and 0 <= x < w):
        raise ValueError(f"point {point} lies outside the {h}x{w} image")
    if zoom < 1 or line < 1:
        raise ValueError(f"zoom and line must be >= 1, got zoom={zoom}, line={line}")
    token = record.token_of_pixel(y, x)
    query_region = record.region_of_token(*token)
    routed = record.routed(query_region, batch)

    out = _shaded(image.astype(np.float32), record, routed, token, batch, heat)
    out = np.clip(np.rint(out), 0, 255).astype(np.uint8)
    out = np.repeat(np.repeat(out, zoom, axis=0), zoom, axis=1)

    for region in routed:
        if region != query_region:
            _border(out, _scaled(record.region_box(region), zoom), ROUTED_COLOR, line)
    _border(out, _scaled(record.region_box(query_region), zoom), QUERY_COLOR, line)
    cy, cx, arm = y * zoom + zoom // 2, x * zoom + zoom // 2, 3 * zoom
    out[max(cy - arm, 0) : cy + arm + 1, max(cx - line // 2, 0) : cx + line - line // 2] = QUERY_COLOR
    out[max(cy - line // 2, 0) : cy + line - line // 2, max(cx - arm, 0) : cx + arm + 1] = QUERY_COLOR
    return out


@dataclass(frozen=True)
class PanelPlace:
    """Where a panel sits in the picture: pixel ``top``/``left`` of its image."""

    row: int
    col: int
    top: int
    left: int
    record: RoutingRecord
    point: tuple[int, int]


@dataclass
class RoutingPicture:
    """The rendered picture ``pixels`` (``[H, W, 3]`` uint8) and its panels' places."""

    pixels: np.ndarray
    panels: list[PanelPlace]
    zoom: int

    def save(self, path) -> None:
        """Write the picture as a PNG."""
        from PIL import Image

        Image.fromarray(self.pixels).save(path, format="PNG")


def _label(record: RoutingRecord) -> str:
    where = f"stage {record.stage}, block {record.block}" if record.stage >= 0 else record.name
    return f"{where}: top-{record.topk} of {record.n_win[0]}x{record.n_win[1]} regions"


_MARGIN, _GAP, _TITLE_H, _HEADER_H = 10, 10, 18, 40  # pixels of the picture's layout


def _picture_size(ncols: int, nrows: int, ph: int, pw: int) -> tuple[int, int]:
    """``(width, height)`` of a grid of ``nrows x ncols`` panels of ``ph x pw`` pixels."""
    width = 2 * _MARGIN + ncols * pw + (ncols - 1) * _GAP
    height = _HEADER_H + nrows * (_TITLE_H + ph) + (nrows - 1) * _GAP + _MARGIN
    return width, height


def render_routing(
    image: np.ndarray | Tensor,
    records: Sequence[RoutingRecord],
    points: Sequence[tuple[int, int]],
    *,
    batch: int = 0,
    zoom: int = 2,
    line: int = 2,
    heat: bool = True,
    title: str | None = None,
    dpi: int = 100,
) -> RoutingPicture:
    """A grid of panels: one row per query point, one column per record (BRA layer).

    Args:
        image: ``[H, W, 3]`` uint8 pixels the model saw (before normalisation).
        records: the layers to show (e.g. the last block of each BRA stage).
        points: query pixels ``(y, x)`` in ``image``.
        zoom: integer upscaling of each panel; line: outline width in output pixels.
        heat: draw the attention heat map (records captured with ``keep_qk=True``).
        title: first header line (default: a description of the colours).

    Returns:
        ``RoutingPicture``: pixels ``[H_pic, W_pic, 3]`` uint8 and the panels' places.
    """
    require("matplotlib", "viz", "drawing the routing").use("Agg", force=False)
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    if not records:
        raise ValueError("no routing records to draw")
    if not points:
        raise ValueError("give at least one query point (y, x)")
    image = np.asarray(image)
    ph, pw = image.shape[0] * zoom, image.shape[1] * zoom
    width, height = _picture_size(len(records), len(points), ph, pw)

    fig = Figure(figsize=(width / dpi, height / dpi), dpi=dpi, facecolor="white")
    canvas = FigureCanvasAgg(fig)
    header = title or (
        "Bi-Level Routing: query region (magenta), routed regions (cyan); heat = the query "
        "token's attention (mean over heads)"
    )
    fig.text(_MARGIN / width, 1 - 6 / height, header, va="top", ha="left", fontsize=9)
    places = []
    for row, point in enumerate(points):
        for col, record in enumerate(records):
            top = _HEADER_H + row * (_TITLE_H + ph + _GAP) + _TITLE_H
            left = _MARGIN + col * (pw + _GAP)
            panel = draw_panel(image, record, point, batch=batch, zoom=zoom, line=line,
                               heat=heat)
            fig.figimage(panel, xo=left, yo=height - top - ph, origin="upper")
            text = f"query {tuple(point)} | {_label(record)}"
            fig.text(left / width, 1 - (top - 3) / height, text, va="bottom", ha="left",
                     fontsize=7)
            places.append(PanelPlace(row, col, top, left, record, tuple(point)))
    canvas.draw()
    pixels = np.asarray(canvas.buffer_rgba())[..., :3].copy()
    if pixels.shape[:2] != (height, width):
        raise RuntimeError(f"rendered {pixels.shape[:2]}, expected {(height, width)}")
    return RoutingPicture(pixels, places, zoom)
