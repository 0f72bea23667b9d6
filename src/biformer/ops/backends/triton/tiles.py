"""Tile choice: a heuristic, a small committed table over it, and per-call overrides.

Precedence, highest first: the ``TileConfig`` passed for a call (or set by ``use_tiles``), the
entry of ``tile_table.TABLE`` for the call's ``ShapeKey``, the heuristic. ``autotune`` (a GPU
mode) measures candidates and prints entries for the table.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from .tile_table import TABLE

__all__ = ["ShapeKey", "TileConfig", "Tiles", "current_override", "plan_tiles", "use_tiles"]


def pow2(n: int, lo: int = 16) -> int:
    """The smallest power of two >= ``n`` and >= ``lo``."""
    return max(lo, 1 << max(int(n) - 1, 0).bit_length())


@dataclass(frozen=True)
class ShapeKey:
    """What a tile choice depends on (the key of the committed table)."""

    dtype: torch.dtype
    q_tokens: int
    k_tokens: int
    topk: int
    d_qk: int
    d_v: int
    soft: bool

    def __str__(self) -> str:
        dtype = str(self.dtype).replace("torch.", "")
        return (f"{dtype}/q{self.q_tokens}/k{self.k_tokens}/topk{self.topk}/"
                f"d{self.d_qk}x{self.d_v}/{'soft' if self.soft else 'hard'}")


@dataclass(frozen=True)
class TileConfig:
    """Tile overrides; a field left None comes from the table or the heuristic.

    ``block_m`` query rows per forward/dQ program (rows of several small regions when it is at
    least twice the region size), ``block_n`` keys per forward/dQ iteration, ``bwd_block_m``
    query rows per dK/dV iteration, ``bwd_block_n`` key tokens per dK/dV program,
    ``chunk_rows`` query rows per dK/dV chunk (a key region routed by more entries is split
    into chunks reduced in a fixed order), warps and pipeline stages per kernel family
    (``num_stages`` None: Triton's default).
    """

    block_m: int | None = None
    block_n: int | None = None
    num_warps: int | None = None
    num_stages: int | None = None
    bwd_block_m: int | None = None
    bwd_block_n: int | None = None
    bwd_num_warps: int | None = None
    bwd_num_stages: int | None = None
    chunk_rows: int | None = None

    def over(self, base: TileConfig) -> TileConfig:
        """This config's fields where set, else ``base``'s."""
        mine = {k: v for k, v in dataclasses.asdict(self).items() if v is not None}
        return dataclasses.replace(base, **mine)

    def as_dict(self) -> dict[str, int]:
        """The fields that are set."""
        return {k: v for k, v in dataclasses.asdict(self).items() if v is not None}


@dataclass(frozen=True)
class Tiles:
    """The resolved tiles of one call (see ``plan_tiles``)."""

    gq: int  # query regions packed per forward/dQ program (1: tile one region's rows)
    block_m: int
    block_n: int
    q_tiles: int  # forward/dQ programs per query region when gq == 1
    num_warps: int
    num_stages: int | None
    bwd_block_m: int
    bwd_block_n: int
    k_tiles: int  # dK/dV programs per key region (and chunk)
    bwd_num_warps: int
    bwd_num_stages: int | None
    block_dqk: int
    block_dv: int
    slots: int  # soft-routing weight-gradient slots per dQ program (power of two)
    chunk: int  # routing entries per dK/dV chunk


_override: list[TileConfig] = []


@contextmanager
def use_tiles(config: TileConfig) -> Iterator[None]:
    """Within this block, calls that pass no ``TileConfig`` use ``config``."""
    _override.append(config)
    try:
        yield
    finally:
        _override.pop()


def current_override() -> TileConfig | None:
    """The innermost ``use_tiles`` config, or None."""
    return _override[-1] if _override else None


def heuristic(key: ShapeKey, block_m: int | None = None) -> TileConfig:
    """The untuned default: 64-row tiles (32 above head_dim 128), 16 rows for small regions;
    the key tile follows ``block_m`` (its packed regions) when given."""
    cap = 32 if max(pow2(key.d_qk), pow2(key.d_v)) > 128 else 64
    if block_m is None:
        block_m = min(pow2(key.q_tokens), cap) if key.q_tokens >= 16 else 16
    gq = _packed_regions(key, block_m)
    return TileConfig(
        block_m=block_m, block_n=min(pow2(gq * key.topk * key.k_tokens), cap),
        num_warps=4 if block_m >= 64 else 2, bwd_block_m=cap,
        bwd_block_n=min(pow2(key.k_tokens), cap), bwd_num_warps=4, chunk_rows=8 * cap,
    )


def _packed_regions(key: ShapeKey, block_m: int) -> int:
    gq = max(1, block_m // key.q_tokens)
    if key.soft:  # bound the per-program weight-gradient slots
        while gq > 1 and gq * pow2(key.topk, 1) > 256:
            gq //= 2
    return gq


def _check(config: TileConfig) -> None:
    for name in ("block_m", "block_n", "bwd_block_m", "bwd_block_n"):
        value = getattr(config, name)
        if value < 16 or value & (value - 1):
            raise ValueError(f"tile {name}={value} must be a power of two >= 16")
    for name in ("num_warps", "bwd_num_warps"):
        if getattr(config, name) not in (1, 2, 4, 8, 16):
            raise ValueError(f"{name}={getattr(config, name)} must be 1, 2, 4, 8 or 16")
    if config.chunk_rows < 1:
        raise ValueError(f"chunk_rows={config.chunk_rows} must be >= 1")


def plan_tiles(key: ShapeKey, config: TileConfig | None = None) -> Tiles:
    """Tiles of a call: ``config`` over the table entry of ``key`` over the heuristic."""
    base = heuristic(key)
    table = TABLE.get(str(key))
    if table is not None:
        base = TileConfig(**table).over(base)
    if config is not None:
        if config.block_m is not None and config.block_n is None:  # re-derive the key tile
            config = dataclasses.replace(config, block_n=heuristic(key, config.block_m).block_n)
        base = config.over(base)
    _check(base)
    gq = _packed_regions(key, base.block_m)
    return Tiles(
        gq=gq, block_m=base.block_m, block_n=base.block_n,
        q_tiles=1 if gq > 1 else math.ceil(key.q_tokens / base.block_m),
        num_warps=base.num_warps, num_stages=base.num_stages,
        bwd_block_m=base.bwd_block_m, bwd_block_n=base.bwd_block_n,
        k_tiles=math.ceil(key.k_tokens / base.bwd_block_n),
        bwd_num_warps=base.bwd_num_warps, bwd_num_stages=base.bwd_num_stages,
        block_dqk=pow2(key.d_qk), block_dv=pow2(key.d_v),
        slots=pow2(gq * pow2(key.topk, 1), 1) if key.soft else 1,
        chunk=max(1, base.chunk_rows // key.q_tokens),
    )

