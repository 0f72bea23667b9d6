"""Launch plans: everything about a call's kernels except the tensors, built once per shape.

A ``LaunchPlan`` holds the geometry, the tiles, every kernel's grid and its keyword arguments
other than tensors (strides, scalars, compile-time constants, by kernel parameter name) and the
shapes of the buffers the kernels write. ``get_plan`` caches plans by the call's shapes,
strides, dtype, device and options, so a layer's second call only looks one up.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass, field

import torch
from torch import Tensor

from .tiles import ShapeKey, TileConfig, Tiles, current_override, plan_tiles

__all__ = ["Geometry", "KernelPlan", "LaunchPlan", "cache_info", "clear_cache", "get_plan"]

LOG2E = math.log2(math.e)
NO_MASK = 1 << 30  # valid_h / valid_w when keys are not masked
CACHE_SIZE = 256


@dataclass(frozen=True)
class Geometry:
    """Shapes of one call: ``n_win`` (Rh, Rw) regions per side, region sizes in tokens."""

    batch: int
    n_win: tuple[int, int]
    q_region: tuple[int, int]
    k_region: tuple[int, int]
    topk: int
    heads: int
    d_qk: int
    d_v: int

    @property
    def num_regions(self) -> int:
        return self.n_win[0] * self.n_win[1]

    @property
    def groups(self) -> int:
        return self.batch * self.num_regions

    @property
    def q_tokens(self) -> int:
        return self.q_region[0] * self.q_region[1]

    @property
    def k_tokens(self) -> int:
        return self.k_region[0] * self.k_region[1]

    def constexprs(self) -> dict[str, int]:
        """The compile-time geometry every kernel takes."""
        return dict(
            N_REGIONS=self.num_regions, REGIONS_W=self.n_win[1], Q_RH=self.q_region[0],
            Q_RW=self.q_region[1], K_RH=self.k_region[0], K_RW=self.k_region[1], TOPK=self.topk,
            D_QK=self.d_qk, D_V=self.d_v,
        )


@dataclass(frozen=True)
class KernelPlan:
    """One kernel launch without its tensors: name, grid, keyword arguments, options."""

    name: str
    grid: tuple[int, int]
    fixed: dict = field(hash=False, compare=False)
    num_warps: int = 4
    num_stages: int | None = None

    def options(self) -> dict[str, int]:
        """``num_warps`` / ``num_stages`` launch options."""
        if self.num_stages is None:
            return {"num_warps": self.num_warps}
        return {"num_warps": self.num_warps, "num_stages": self.num_stages}


@dataclass(frozen=True)
class LaunchPlan:
    """The kernels of one call shape (see the module docstring)."""

    geometry: Geometry
    tiles: Tiles
    split: bool  # dK/dV chunks with partials (a key region may exceed one chunk)
    soft: bool
    packed: tuple[int, int, int] | None  # channel split of one q|k|v buffer, or None
    fwd: KernelPlan
    dq: KernelPlan
    dkdv: KernelPlan
    reduce: KernelPlan | None
    out_shape: tuple[int, ...]
    lse_shape: tuple[int, ...]
    dw_part_shape: tuple[int, ...]
    part_shapes: tuple[tuple[int, ...], tuple[int, ...]]


def _strides(prefix: str, stride: tuple[int, ...], dims: str = "bhwc") -> dict[str, int]:
    return {f"{prefix}{d}": s for d, s in zip(dims, stride, strict=False)}


def _contiguous_strides(shape: tuple[int, ...]) -> tuple[int, ...]:
    out, step = [], 1
    for n in reversed(shape):
        out.append(step)
        step *= n
    return tuple(reversed(out))


def _precision(dtype: torch.dtype) -> str:
    """fp32 dots are exact unless TF32 is allowed for torch matmuls too."""
    if dtype == torch.float32 and not torch.backends.cuda.matmul.allow_tf32:
        return "ieee"
    return "tf32"  # 16-bit inputs ignore it


def _geometry(q_shape, v_shape, topk: int, n_win: tuple[int, int], heads: int) -> Geometry:
    b, hq, wq, cqk = q_shape
    _, hk, wk, cv = v_shape
    rh, rw = n_win
    return Geometry(batch=b, n_win=(rh, rw), q_region=(hq // rh, wq // rw),
                    k_region=(hk // rh, wk // rw), topk=topk, heads=heads, d_qk=cqk // heads,
                    d_v=cv // heads)


def _grad_strides(geo: Geometry, q_shape, k_shape, v_shape, packed) -> tuple:
    """Strides of dq, dk, dv: views of one packed buffer, or each contiguous."""
    if packed is not None:
        one = _contiguous_strides((*q_shape[:3], sum(packed)))
        return one, one, one
    return tuple(_contiguous_strides(tuple(s)) for s in (q_shape, k_shape, v_shape))


@dataclass(frozen=True)
class _Call:
    """What a plan depends on (the cache key, with the tile override)."""

    q: tuple  # (shape, stride) of query, key, value
    k: tuple
    v: tuple
    dtype: torch.dtype
    topk: int
    n_win: tuple[int, int]
    heads: int
    scale: float
    soft: bool
    key_valid: tuple[int, int] | None
    packed: tuple[int, int, int] | None
    config: TileConfig | None
    precision: str


def _kernel(name: str, grid: tuple[int, int], kwargs: dict, warps: int, stages) -> KernelPlan:
    from .kernels import KERNELS

    names = set(KERNELS[name].arg_names)
    fixed = {k: v for k, v in kwargs.items() if k in names}
    return KernelPlan(name, grid, fixed, warps, stages)


def _scalars(call: _Call, geo: Geometry, tiles: Tiles) -> dict:
    from .kernels import interpreting

    valid_h, valid_w = call.key_valid if call.key_valid is not None else (NO_MASK, NO_MASK)
    return dict(
        geo.constexprs(), n_groups=geo.groups, n_entries=geo.groups * geo.topk,
        valid_h=valid_h, valid_w=valid_w, sm_scale=call.scale, qk_scale=call.scale * LOG2E,
        BLOCK_DQK=tiles.block_dqk, BLOCK_DV=tiles.block_dv, HAS_W=call.soft,
        MASK_KEYS=call.key_valid is not None, DOT_F32=interpreting(), PREC=call.precision,
        Q_TILES=tiles.q_tiles, GQ=tiles.gq, SLOTS=tiles.slots, K_TILES=tiles.k_tiles,
        CHUNK=tiles.chunk,
    )


def _build(call: _Call) -> LaunchPlan:
    geo = _geometry(call.q[0], call.v[0], call.topk, call.n_win, call.heads)
    tiles = plan_tiles(ShapeKey(call.dtype, geo.q_tokens, geo.k_tokens, geo.topk, geo.d_qk,
                                geo.d_v, call.soft), call.config)
    split = geo.num_regions * geo.topk > tiles.chunk
    n_blocks = math.ceil(geo.groups * geo.topk / tiles.chunk)
    out_shape = (*call.q[0][:3], call.v[0][3])
    dq_s, dk_s, dv_s = _grad_strides(geo, call.q[0], call.k[0], call.v[0], call.packed)
    base = dict(_scalars(call, geo, tiles), SPLIT=split, **_strides("sq", call.q[1]),
                **_strides("sk", call.k[1]), **_strides("sv", call.v[1]),
                **_strides("so", _contiguous_strides(out_shape), "bhw"),
                **_strides("sdq", dq_s, "bhw"), **_strides("sdk", dk_s, "bhw"),
                **_strides("sdv", dv_s, "bhw"))
    q_grid = (math.ceil(geo.groups / tiles.gq) if tiles.gq > 1 else geo.groups * tiles.q_tiles,
              geo.heads)
    query_tiles = dict(BLOCK_M=tiles.block_m, BLOCK_N=tiles.block_n)
    key_tiles = dict(BLOCK_M=tiles.bwd_block_m, BLOCK_N=tiles.bwd_block_n)
    items = geo.groups + (n_blocks if split else 0)
    warps, stages = tiles.bwd_num_warps, tiles.bwd_num_stages
    rows = tiles.k_tiles * tiles.bwd_block_n
    return LaunchPlan(
        geometry=geo, tiles=tiles, split=split, soft=call.soft, packed=call.packed,
        fwd=_kernel("fwd", q_grid, {**base, **query_tiles}, tiles.num_warps, tiles.num_stages),
        dq=_kernel("bwd_dq", q_grid, {**base, **query_tiles}, tiles.num_warps, tiles.num_stages),
        dkdv=_kernel("bwd_dkdv", (items * tiles.k_tiles, geo.heads), {**base, **key_tiles},
                     warps, stages),
        reduce=_kernel("bwd_dkdv_reduce", (n_blocks * tiles.k_tiles, geo.heads),
                       {**base, **key_tiles}, warps, stages) if split else None,
        out_shape=out_shape, lse_shape=(geo.groups, geo.heads, geo.q_tokens),
        dw_part_shape=(tiles.q_tiles, geo.heads, geo.groups, geo.topk),
        part_shapes=((2 * n_blocks, geo.heads, rows, tiles.block_dqk),
                     (2 * n_blocks, geo.heads, rows, tiles.block_dv)) if split else ((0,), (0,)),
    )


_cache: OrderedDict[_Call, LaunchPlan] = OrderedDict()
_stats = {"hits": 0, "misses": 0}


def get_plan(query: Tensor, key: Tensor, value: Tensor, topk: int, *, soft: bool,
             n_win: tuple[int, int], heads: int, scale: float,
             key_valid: tuple[int, int] | None = None,
             packed: tuple[int, int, int] | None = None,
             config: TileConfig | None = None) -> LaunchPlan:
    """The (cached) plan of a call on NHWC ``query``/``key``/``value`` with ``topk`` routed
    regions; ``config`` (else the ``use_tiles`` override) overrides the tiles."""
    call = _Call(
        (query.shape, query.stride()), (key.shape, key.stride()), (value.shape, value.stride()),
        query.dtype, topk, n_win, heads, scale, soft, key_valid, packed,
        config if config is not None else current_override(), _precision(query.dtype),
    )
    plan = _cache.get(call)
    if plan is not None:
        _stats["hits"] += 1
        return plan
    _stats["misses"] += 1
    plan = _cache[call] = _build(call)
    if len(_cache) > CACHE_SIZE:
        _cache.popitem(last=False)
    return plan


def cache_info() -> dict[str, int]:
    """Plan cache ``hits``, ``misses`` and ``size``."""
    return {**_stats, "size": len(_cache)}


def clear_cache() -> None:
    """Forget every plan (and the counters)."""
    _cache.clear()
    _stats.update(hits=0, misses=0)
