"""Capturing the routing of every Bi-Level Routing Attention layer with forward hooks.

``capture_routing(model, images)`` runs the model once and returns one ``RoutingRecord`` per
BRA call: which key regions each query region was routed to, the routing weights, and the
geometry needed to map regions and tokens back to image pixels. With ``keep_qk=True`` the
records also hold the layer's queries and keys, from which ``query_attention`` recomputes the
token attention of any query (what the layer's softmax gave it over its routed tokens).

Hooks are registered on the model in place (no copy) and removed when the capture ends.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..layers import BiLevelRoutingAttention, BRA2d
from ..layers.bra2d import region_layout
from ..ops import from_regions, to_regions

__all__ = [
    "RoutingRecord",
    "attention_map",
    "capture_routing",
    "query_attention",
    "routing_hooks",
    "routing_modules",
]

_STAGE_BLOCK = re.compile(r"stages[._](\d+)\.(?:blocks\.)?(\d+)")


@dataclass
class RoutingRecord:
    """The routing of one BRA layer for one forward pass.

    Attributes:
        name: the layer's module path in the model (e.g. ``"stages.1.blocks.3.attn"``).
        stage, block: parsed from ``name`` (-1 when the path has no ``stages.i...j``).
        n_win: regions per side ``(Rh, Rw)``; region ``r`` is row ``r // Rw``, column ``r % Rw``.
        region_size: tokens per region ``(rh, rw)`` of the (padded) map.
        map_size: ``(H, W)`` tokens of the layer's input before any padding.
        image_size: ``(H, W)`` pixels of the model input.
        weights: ``[B, R, topk]`` routing softmax weights (float32, CPU).
        index: ``[B, R, topk]`` routed key-region ids per query region, most affine first.
        scale, num_heads: the layer's attention temperature and heads.
        query, key: ``[B, Rh*rh, Rw*rw, C]`` NHWC queries/keys of the padded map (float32,
            CPU), present with ``keep_qk=True``.
        soft_routing: keys were scaled by the routing weights (soft routing).
        key_valid: ``(H, W)`` when padded keys are masked out of the attention, else None.
    """

    name: str
    stage: int
    block: int
    n_win: tuple[int, int]
    region_size: tuple[int, int]
    map_size: tuple[int, int]
    image_size: tuple[int, int]
    weights: Tensor
    index: Tensor
    scale: float
    num_heads: int
    query: Tensor | None = field(default=None, repr=False)
    key: Tensor | None = field(default=None, repr=False)
    soft_routing: bool = False
    key_valid: tuple[int, int] | None = None

    @property
    def topk(self) -> int:
        return int(self.index.shape[-1])

    @property
    def stride(self) -> tuple[float, float]:
        """Image pixels per map token along height and width."""
        return (self.image_size[0] / self.map_size[0], self.image_size[1] / self.map_size[1])

    def token_of_pixel(self, y: float, x: float) -> tuple[int, int]:
        """The map token ``(row, col)`` covering image pixel ``(y, x)``."""
        sy, sx = self.stride
        ty = min(max(int(y // sy), 0), self.map_size[0] - 1)
        tx = min(max(int(x // sx), 0), self.map_size[1] - 1)
        return ty, tx

    def region_of_token(self, ty: int, tx: int) -> int:
        """Raster id of the region holding map token ``(ty, tx)``."""
        return (ty // self.region_size[0]) * self.n_win[1] + tx // self.region_size[1]

    def region_of_pixel(self, y: float, x: float) -> int:
        """Raster id of the region holding image pixel ``(y, x)``."""
        return self.region_of_token(*self.token_of_pixel(y, x))

    def region_tokens(self, region: int) -> tuple[int, int, int, int]:
        """``(top, left, bottom, right)`` map tokens of ``region`` that lie on the real map
        (end-exclusive; empty when the region is all padding)."""
        rh, rw = self.region_size
        i, j = divmod(int(region), self.n_win[1])
        top, left = min(i * rh, self.map_size[0]), min(j * rw, self.map_size[1])
        bottom = min((i + 1) * rh, self.map_size[0])
        right = min((j + 1) * rw, self.map_size[1])
        return top, left, bottom, right

    def region_box(self, region: int) -> tuple[int, int, int, int]:
        """``(top, left, bottom, right)`` image pixels of ``region`` (end-exclusive)."""
        top, left, bottom, right = self.region_tokens(region)
        sy, sx = self.stride
        return (round(top * sy), round(left * sx), round(bottom * sy), round(right * sx))

    def routed(self, region: int, batch: int = 0) -> list[int]:
        """Key regions routed to query ``region`` of image ``batch``, most affine first."""
        return [int(r) for r in self.index[batch, region]]


def routing_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """``(name, module)`` of every Bi-Level Routing Attention layer of ``model``."""
    return [
        (name, m) for name, m in model.named_modules()
        if isinstance(m, (BiLevelRoutingAttention, BRA2d))
    ]


def _stage_block(name: str, ordinal: int) -> tuple[int, int]:
    match = _STAGE_BLOCK.search(name)
    return (int(match.group(1)), int(match.group(2))) if match else (-1, ordinal)


class _Recorder:
    """Hook callbacks of one BRA layer; appends a ``RoutingRecord`` per call."""

    def __init__(self, name: str, module: nn.Module, ordinal: int, sink: list[RoutingRecord],
                 image_size: list[tuple[int, int]], keep_qk: bool):
        self.name, self.module, self.sink = name, module, sink
        self.stage, self.block = _stage_block(name, ordinal)
        self.image_size = image_size
        self.keep_qk = keep_qk
        self.nchw = isinstance(module, BRA2d)
        self._map_size: tuple[int, int] | None = None
        self._qk: tuple[Tensor, Tensor] | None = None

    def geometry(self, n_win: tuple[int, int]) -> tuple[int, int]:
        """Tokens per region of the padded map, as the layer computes them."""
        h, w = self._map_size
        if self.nchw:
            return region_layout((h, w), self.module.n_win)[0]
        return math.ceil(h / n_win[0]), math.ceil(w / n_win[1])

    def pre_forward(self, module: nn.Module, args: tuple) -> None:
        x = args[0]
        self._map_size = tuple(x.shape[2:4]) if self.nchw else tuple(x.shape[1:3])
        self._qk = None

    def qkv_output(self, module: nn.Module, args: tuple, output) -> None:
        if not self.keep_qk:
            return
        if self.nchw:  # [B, 3C, H, W] of the unpadded map: pad as the layer does
            c = self.module.dim
            h, w = self._map_size
            rs, grid = region_layout((h, w), self.module.n_win)
            out = F.pad(output.detach(), (0, grid[1] * rs[1] - w, 0, grid[0] * rs[0] - h))
            q, k = out[:, :c].permute(0, 2, 3, 1), out[:, c : 2 * c].permute(0, 2, 3, 1)
        else:  # (q, k, v) NHWC views of the padded map
            q, k = output[0].detach(), output[1].detach()
        self._qk = (q.float().cpu(), k.float().cpu())

    def routing(self, module: nn.Module, args: tuple, output) -> None:
        weights, index, n_win = output
        n_win = (int(n_win[0]), int(n_win[1]))
        m = self.module
        key_valid = None
        if self.nchw and m.mask_padded_keys:
            key_valid = self._map_size
        q, k = self._qk if self._qk is not None else (None, None)
        self.sink.append(RoutingRecord(
            name=self.name,
            stage=self.stage,
            block=self.block,
            n_win=n_win,
            region_size=self.geometry(n_win),
            map_size=self._map_size,
            image_size=self.image_size[-1] if self.image_size else self._map_size,
            weights=weights.detach().float().cpu(),
            index=index.detach().cpu(),
            scale=float(m.scale),
            num_heads=int(m.num_heads),
            query=q,
            key=k,
            soft_routing=bool(getattr(m, "soft_routing", False)),
            key_valid=key_valid,
        ))


@contextmanager
def routing_hooks(model: nn.Module, *, keep_qk: bool = False) -> Iterator[list[RoutingRecord]]:
    """Within the context, every forward of ``model`` appends its ``RoutingRecord``s.

    Yields the list being filled (in call order). The hooks are removed on exit, even on error.
    Raises ValueError if the model has no Bi-Level Routing Attention layer.
    """
    found = routing_modules(model)
    if not found:
        raise ValueError(
            f"{type(model).__name__} has no Bi-Level Routing Attention layer to observe; "
            "pass a BiFormer model (timm.create_model('biformer_tiny'), ...)"
        )
    records: list[RoutingRecord] = []
    image_size: list[tuple[int, int]] = []
    handles = [model.register_forward_pre_hook(
        lambda _m, args: image_size.append(tuple(args[0].shape[-2:])) if args else None
    )]
    try:
        for ordinal, (name, module) in enumerate(found):
            rec = _Recorder(name, module, ordinal, records, image_size, keep_qk)
            handles.append(module.register_forward_pre_hook(rec.pre_forward))
            handles.append(module.routing_tap.register_forward_hook(rec.routing))
            qkv = module.qkv_linear if isinstance(module, BRA2d) else module.qkv
            handles.append(qkv.register_forward_hook(rec.qkv_output))
        yield records
    finally:
        for handle in handles:
            handle.remove()


def capture_routing(
    model: nn.Module, images: Tensor, *, keep_qk: bool = True
) -> list[RoutingRecord]:
    """Run ``model`` on ``images`` (``[B, 3, H, W]``, NCHW, normalised) and return the routing.

    One ``RoutingRecord`` per BRA layer call, in forward order. The model runs under
    ``torch.no_grad()`` in its current train/eval mode; nothing in it is changed.
    ``keep_qk`` keeps each layer's queries and keys (for ``query_attention``).
    """
    if not isinstance(images, Tensor) or images.dim() != 4:
        raise ValueError(
            "images must be a [batch, channels, height, width] tensor, got "
            + (f"shape {tuple(images.shape)}" if isinstance(images, Tensor) else
               type(images).__name__)
        )
    with routing_hooks(model, keep_qk=keep_qk) as records, torch.no_grad():
        model(images)
    return list(records)


def query_attention(
    record: RoutingRecord, token: tuple[int, int], *, batch: int = 0
) -> tuple[list[int], Tensor]:
    """The attention of one query token over its routed key tokens, averaged over heads.

    Args:
        record: a record captured with ``keep_qk=True``.
        token: ``(row, col)`` of the query on the layer's map (``record.token_of_pixel``).
        batch: image index.

    Returns:
        ``(routed, probs)``: the routed key-region ids (``index`` order) and ``[topk * L]``
        probabilities (``L`` tokens per region, raster order inside each region), the mean over
        heads of each head's softmax; they sum to 1.
    """
    if record.query is None or record.key is None:
        raise ValueError("this record has no queries/keys; capture it with keep_qk=True")
    ty, tx = token
    if not (0 <= ty < record.map_size[0] and 0 <= tx < record.map_size[1]):
        raise ValueError(f"token {token} lies outside the layer's map {record.map_size}")
    region = record.region_of_token(ty, tx)
    routed = record.routed(region, batch)
    keys = to_regions(record.key[batch : batch + 1], record.n_win)[0]  # R, L, C
    sel = keys[routed]  # topk, L, C
    if record.soft_routing:
        sel = sel * record.weights[batch, region].view(-1, 1, 1)
    m = record.num_heads
    q = record.query[batch, ty, tx].view(m, -1) * record.scale  # m, d
    k = sel.reshape(-1, m, q.shape[-1])  # topk*L, m, d
    logits = torch.einsum("md,nmd->mn", q, k)  # m, topk*L
    if record.key_valid is not None:
        size = record.key.shape[1:3]
        valid = torch.zeros(1, size[0], size[1], 1, dtype=torch.bool)
        valid[:, : record.key_valid[0], : record.key_valid[1]] = True
        valid = to_regions(valid, record.n_win)[0, routed].reshape(-1)
        logits = logits.masked_fill(~valid, float("-inf"))
    return routed, torch.softmax(logits, dim=-1).mean(0)


def attention_map(record: RoutingRecord, token: tuple[int, int], *, batch: int = 0) -> Tensor:
    """``query_attention`` laid out on the layer's map: ``[H, W]`` (zero off the routed
    regions; padded tokens cropped)."""
    routed, probs = query_attention(record, token, batch=batch)
    rh, rw = record.n_win
    length = record.region_size[0] * record.region_size[1]
    grid = torch.zeros(1, rh * rw, length, 1)
    grid[0, routed, :, 0] = probs.view(len(routed), length)
    size = (rh * record.region_size[0], rw * record.region_size[1])
    full = from_regions(grid, record.n_win, size)[0, ..., 0]  # Hp, Wp
    return full[: record.map_size[0], : record.map_size[1]]
