"""Tensor checks of the routed-attention operator: clear errors instead of crashes or silence.

``check_routed_attention_args`` is what ``biformer.ops.routed_attention(validate=True)`` (the
default) runs before any backend sees the call, so it covers every backend: shapes, dtypes,
devices, sizes (no broadcasting), ``key_valid`` and the routing ids themselves, which must lie in
``[0, num_regions)`` (otherwise a backend could read another image's regions). The id check is
the only one that reads tensor data: one small reduction and one host sync per call (cost in
docs/bra.md); the layers skip it (``validate=False``) because their ids come from
``topk_routing``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from .arguments import check_int, check_scale, check_valid_size

__all__ = [
    "Problem",
    "check_feature_maps",
    "check_index",
    "check_index_values",
    "check_maps",
    "check_routed_attention_args",
    "describe_problem",
]


@dataclass(frozen=True)
class Problem:
    """What a backend needs to know to decide whether it can run a call.

    ``n_win`` is the region grid ``(Rh, Rw)``, ``q_region_size``/``kv_region_size`` the tokens
    per query/key region ``(rh, rw)``. ``repeated_index`` is True when some row of the routing
    index names a key region twice (known only when the public op validated the ids).
    """

    device_type: str
    dtype: torch.dtype
    batch: int
    n_win: tuple[int, int]
    q_region_size: tuple[int, int]
    kv_region_size: tuple[int, int]
    topk: int
    num_heads: int
    qk_head_dim: int
    v_head_dim: int
    soft_routing: bool
    masked_keys: bool
    needs_grad: bool
    repeated_index: bool = False

    @property
    def num_regions(self) -> int:
        return self.n_win[0] * self.n_win[1]

    @property
    def q_tokens(self) -> int:
        return self.q_region_size[0] * self.q_region_size[1]

    @property
    def kv_tokens(self) -> int:
        return self.kv_region_size[0] * self.kv_region_size[1]

    def gathered_bytes(self, itemsize: int | None = None) -> int:
        """Memory the gather-based reference needs: gathered K/V plus the attention matrix."""
        itemsize = itemsize or torch.empty((), dtype=self.dtype).element_size()
        groups = self.batch * self.num_regions
        keys = self.topk * self.kv_tokens
        kv = groups * keys * self.num_heads * (self.qk_head_dim + self.v_head_dim)
        attn = groups * self.num_heads * self.q_tokens * keys
        return (kv + 2 * attn) * itemsize


def check_feature_maps(named: tuple[tuple[str, object], ...], rank: int, layout: str) -> None:
    """Each ``(name, tensor)`` is a floating-point tensor of ``rank`` dims (``layout``), and
    all share one dtype and one device."""
    for name, t in named:
        if not isinstance(t, Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dim() != rank:
            hint = "; add a batch dimension with .unsqueeze(0)" if t.dim() == rank - 1 else ""
            raise ValueError(
                f"{name} must be a {rank}-D tensor {layout}, got shape {tuple(t.shape)}{hint}"
            )
        if not t.is_floating_point():
            raise TypeError(
                f"{name} must be a floating-point tensor (float16/bfloat16/float32/float64), "
                f"got {t.dtype}; convert it with .float()"
            )
    (first, t0), rest = named[0], named[1:]
    for name, t in rest:
        if t.dtype != t0.dtype:
            raise TypeError(
                f"{first} and {name} must share one dtype, got {first}.dtype={t0.dtype} and "
                f"{name}.dtype={t.dtype}; convert with .to({first}.dtype)"
            )
        if t.device != t0.device:
            raise ValueError(
                f"{first} and {name} must be on one device, got {first} on {t0.device} and "
                f"{name} on {t.device}; move them with .to({first}.device)"
            )


def check_maps(
    query: Tensor, key: Tensor, value: Tensor, n_win: tuple[int, int], num_heads: int
) -> None:
    """Validate NHWC queries, keys and values against ``n_win`` and ``num_heads``."""
    named = (("query", query), ("key", key), ("value", value))
    check_feature_maps(named, 4, "NHWC [batch, height, width, channels]")
    (b, hq, wq, cq), (bk, hk, wk, ck), (bv, hv, wv, cv) = query.shape, key.shape, value.shape
    if not b == bk == bv:
        raise ValueError(
            f"batch sizes differ: query has {b}, key {bk}, value {bv}; pass one batch size "
            "(no broadcasting)"
        )
    if ck != cq:
        raise ValueError(f"query and key need the same channel count, got {cq} and {ck}")
    if cq < 1 or cv < 1:
        raise ValueError(
            f"query/key and value need at least one channel, got {cq} and {cv} channels"
        )
    if (hv, wv) != (hk, wk):
        raise ValueError(
            f"key and value need the same spatial size, got {(hk, wk)} and {(hv, wv)}"
        )
    check_int(num_heads, "num_heads")
    if cq % num_heads or cv % num_heads:
        raise ValueError(
            f"{num_heads=} must divide the query/key channels ({cq}) and the value channels "
            f"({cv}); choose num_heads among their common divisors"
        )
    rh, rw = n_win
    for name, (h, w) in (("query", (hq, wq)), ("key", (hk, wk))):
        if h == 0 or w == 0:
            raise ValueError(f"{name} has an empty {h}x{w} map: height and width must be >= 1")
        if h % rh or w % rw:
            raise ValueError(
                f"{name} size {(h, w)} is not a multiple of {n_win=}; pad the map to a "
                "multiple of n_win (the layers' auto_pad does) or change n_win"
            )


def check_index(
    index: Tensor, weight: Tensor | None, query: Tensor, n_win: tuple[int, int]
) -> None:
    """Validate the layout of a routing ``index`` ``[B, R, topk]`` and soft-routing ``weight``
    (the shape of ``index``, floating point); no data is read."""
    b, num_regions = query.shape[0], n_win[0] * n_win[1]
    if not isinstance(index, Tensor):
        raise TypeError(f"index must be a torch.Tensor, got {type(index).__name__}")
    if index.dtype not in (torch.int64, torch.int32):
        raise TypeError(f"index must be an int64 (or int32) tensor, got {index.dtype}")
    if index.device != query.device:
        raise ValueError(f"index is on {index.device} but query on {query.device}")
    if index.dim() != 3 or index.shape[0] != b or index.shape[1] != num_regions:
        raise ValueError(
            f"index must be [batch, num_regions, topk] = [{b}, {num_regions}, topk] for "
            f"{n_win=}, got shape {tuple(index.shape)} (no broadcasting)"
        )
    topk = index.shape[2]
    if not 1 <= topk <= num_regions:
        raise ValueError(
            f"index has {topk=} routed regions per row; it must be between 1 and {num_regions=}"
        )
    if weight is None:
        return
    if not isinstance(weight, Tensor) or not weight.is_floating_point():
        raise TypeError(
            f"weight must be a floating-point tensor, got {getattr(weight, 'dtype', weight)!r}"
        )
    if weight.device != query.device:
        raise ValueError(f"weight is on {weight.device} but query on {query.device}")
    if tuple(weight.shape) != tuple(index.shape):
        raise ValueError(
            f"weight must have the shape of index {tuple(index.shape)}, got "
            f"{tuple(weight.shape)} (no broadcasting)"
        )


def check_index_values(index: Tensor, num_regions: int) -> bool:
    """Raise unless every id of ``index`` lies in ``[0, num_regions)``; return whether a row
    repeats an id. A few small reductions and one host sync (a device sync on CUDA)."""
    if index.numel() == 0:
        return False
    lo, hi = index.aminmax()
    flags = [lo.long(), hi.long()]
    if index.shape[-1] > 1:
        rows = index.reshape(-1, index.shape[-1]).long().clamp(0, num_regions - 1)
        flags.append(_repeats(rows, num_regions).long())
    stats = torch.stack(flags).tolist()
    if stats[0] < 0 or stats[1] >= num_regions:
        bad = ((index < 0) | (index >= num_regions)).nonzero()[0].tolist()
        raise ValueError(
            f"index[{bad[0]}, {bad[1]}, {bad[2]}]={int(index[tuple(bad)])} is not a region id: "
            f"ids must lie in [0, {num_regions=}) (negative ids are not wrapped); build index "
            "with topk_routing or clamp it"
        )
    return len(stats) > 2 and stats[2] == 1


def _repeats(rows: Tensor, num_regions: int) -> Tensor:
    """0-dim bool: some row of ``rows`` ``[N, topk]`` (ids in ``[0, num_regions)``) repeats
    an id. Per-row id counts (one scatter) while a row of counters is at most 16 times a row of
    ids, else sorted rows (counters would cost more memory than the sort)."""
    topk = rows.shape[1]
    if num_regions <= 16 * topk:
        counts = torch.zeros(rows.shape[0], num_regions, dtype=torch.int32, device=rows.device)
        counts.scatter_add_(1, rows, torch.ones_like(rows, dtype=torch.int32))
        return (counts > 1).any()
    return (rows.sort(dim=-1).values.diff(dim=-1) == 0).any()


def check_routed_attention_args(
    query: Tensor,
    key: Tensor,
    value: Tensor,
    index: Tensor,
    weight: Tensor | None,
    n_win: tuple[int, int],
    num_heads: int,
    *,
    scale: object = 1.0,
    key_valid: object = None,
    check_values: bool = True,
) -> Problem:
    """Validate the operator's inputs and describe the call; raises ValueError/TypeError.

    ``check_values=False`` skips the one data-dependent check (the routing ids' range), e.g.
    while a model is traced for export.
    """
    check_maps(query, key, value, n_win, num_heads)
    check_index(index, weight, query, n_win)
    check_scale(scale)
    if key_valid is not None:
        size = (key.shape[1], key.shape[2])
        check_valid_size(key_valid, "key_valid", size, (size[0] // n_win[0], size[1] // n_win[1]))
    repeated = check_index_values(index, n_win[0] * n_win[1]) if check_values else False
    return describe_problem(query, key, value, index, weight, n_win, num_heads,
                            masked_keys=key_valid is not None, repeated_index=repeated)


def describe_problem(
    query: Tensor,
    key: Tensor,
    value: Tensor,
    index: Tensor,
    weight: Tensor | None,
    n_win: tuple[int, int],
    num_heads: int,
    masked_keys: bool = False,
    repeated_index: bool = False,
) -> Problem:
    """The ``Problem`` of a call whose arguments are known to be valid (no checks)."""
    b, hq, wq, cq = query.shape
    _, hk, wk, _ = key.shape
    rh, rw = n_win
    needs_grad = torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (query, key, value, weight)
    )
    return Problem(
        device_type=query.device.type,
        dtype=query.dtype,
        batch=b,
        n_win=(rh, rw),
        q_region_size=(hq // rh, wq // rw),
        kv_region_size=(hk // rh, wk // rw),
        topk=index.shape[2],
        num_heads=num_heads,
        qk_head_dim=cq // num_heads,
        v_head_dim=value.shape[-1] // num_heads,
        soft_routing=weight is not None,
        masked_keys=masked_keys,
        needs_grad=needs_grad,
        repeated_index=repeated_index,
    )
