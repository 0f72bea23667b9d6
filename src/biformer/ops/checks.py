"""Argument checks for the routed-attention operator: clear errors instead of crashes."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = [
    "Problem",
    "check_index",
    "check_maps",
    "check_routed_attention_args",
    "describe_problem",
]


@dataclass(frozen=True)
class Problem:
    """What a backend needs to know to decide whether it can run a call."""

    device_type: str
    dtype: torch.dtype
    batch: int
    regions: tuple[int, int]
    q_region: tuple[int, int]
    kv_region: tuple[int, int]
    topk: int
    num_heads: int
    qk_head_dim: int
    v_head_dim: int
    soft_routing: bool
    masked_keys: bool
    needs_grad: bool

    @property
    def num_regions(self) -> int:
        return self.regions[0] * self.regions[1]

    @property
    def q_tokens(self) -> int:
        return self.q_region[0] * self.q_region[1]

    @property
    def kv_tokens(self) -> int:
        return self.kv_region[0] * self.kv_region[1]

    def gathered_bytes(self, itemsize: int | None = None) -> int:
        """Memory the gather-based reference needs: gathered K/V plus the attention matrix."""
        itemsize = itemsize or torch.empty((), dtype=self.dtype).element_size()
        groups = self.batch * self.num_regions
        keys = self.topk * self.kv_tokens
        kv = groups * keys * self.num_heads * (self.qk_head_dim + self.v_head_dim)
        attn = groups * self.num_heads * self.q_tokens * keys
        return (kv + 2 * attn) * itemsize


def _describe(t: Tensor) -> str:
    return f"shape {tuple(t.shape)}, dtype {t.dtype}"


def check_routed_attention_args(
    query: Tensor,
    key: Tensor,
    value: Tensor,
    index: Tensor,
    weight: Tensor | None,
    regions: tuple[int, int],
    num_heads: int,
) -> Problem:
    """Validate the operator's inputs and describe the call; raises ValueError/TypeError."""
    check_maps(query, key, value, regions, num_heads)
    check_index(index, weight, query, regions)
    return describe_problem(query, key, value, index, weight, regions, num_heads)


def check_maps(
    query: Tensor, key: Tensor, value: Tensor, regions: tuple[int, int], num_heads: int
) -> None:
    """Validate NHWC queries, keys and values against ``n_win`` and ``num_heads``."""
    for name, t in (("query", query), ("key", key), ("value", value)):
        if not isinstance(t, Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dim() != 4:
            raise ValueError(
                f"{name} must be a 4-D NHWC tensor [batch, height, width, channels], "
                f"got {_describe(t)}"
            )
        if not t.is_floating_point():
            raise TypeError(
                f"{name} must be a floating-point tensor (float16/bfloat16/float32/float64), "
                f"got {t.dtype}; convert it with .float()"
            )
    if not (query.dtype == key.dtype == value.dtype):
        raise TypeError(
            f"query, key and value must share one dtype, got {query.dtype}, {key.dtype}, "
            f"{value.dtype}"
        )
    if not (query.device == key.device == value.device):
        raise ValueError("query, key and value must be on the same device")
    b, hq, wq, cq = query.shape
    bk, hk, wk, ck = key.shape
    if bk != b or value.shape[0] != b:
        raise ValueError(f"batch sizes differ: query {b}, key {bk}, value {value.shape[0]}")
    if ck != cq:
        raise ValueError(f"query and key need the same channel count, got {cq} and {ck}")
    if tuple(value.shape[1:3]) != (hk, wk):
        raise ValueError(
            f"key and value need the same spatial size, got {(hk, wk)} and "
            f"{tuple(value.shape[1:3])}"
        )
    if num_heads < 1 or cq % num_heads or value.shape[-1] % num_heads:
        raise ValueError(
            f"num_heads={num_heads} must divide the query/key channels ({cq}) and the value "
            f"channels ({value.shape[-1]})"
        )
    rh, rw = regions
    for name, (h, w) in (("query", (hq, wq)), ("key", (hk, wk))):
        if h % rh or w % rw or h < rh or w < rw:
            raise ValueError(
                f"{name} spatial size {(h, w)} is not a multiple of the region grid {regions}; "
                "pad the input to a multiple of n_win (auto_pad=True) or change n_win"
            )


def check_index(
    index: Tensor, weight: Tensor | None, query: Tensor, regions: tuple[int, int]
) -> None:
    """Validate a routing ``index`` ``[B, R, topk]`` (and soft-routing ``weight``)."""
    b = query.shape[0]
    r = regions[0] * regions[1]
    if not isinstance(index, Tensor):
        raise TypeError(f"index must be a torch.Tensor, got {type(index).__name__}")
    if index.device != query.device:
        raise ValueError(f"index is on {index.device} but query on {query.device}")
    if index.dim() != 3 or index.shape[0] != b or index.shape[1] != r:
        raise ValueError(
            f"index must be [batch, regions, topk] = [{b}, {r}, topk], got {tuple(index.shape)}"
        )
    if index.dtype not in (torch.int64, torch.int32):
        raise TypeError(f"index must be an integer (int64) tensor, got {index.dtype}")
    topk = index.shape[2]
    if not 1 <= topk <= r:
        raise ValueError(f"topk={topk} must be between 1 and the number of regions ({r})")
    if weight is not None and tuple(weight.shape) != tuple(index.shape):
        raise ValueError(
            f"weight must have the shape of index {tuple(index.shape)}, got {tuple(weight.shape)}"
        )


def describe_problem(
    query: Tensor,
    key: Tensor,
    value: Tensor,
    index: Tensor,
    weight: Tensor | None,
    regions: tuple[int, int],
    num_heads: int,
    masked_keys: bool = False,
) -> Problem:
    """The ``Problem`` of a call whose arguments are known to be valid (no checks)."""
    b, hq, wq, cq = query.shape
    _, hk, wk, _ = key.shape
    rh, rw = regions
    needs_grad = torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (query, key, value, weight)
    )
    return Problem(
        device_type=query.device.type,
        dtype=query.dtype,
        batch=b,
        regions=(rh, rw),
        q_region=(hq // rh, wq // rw),
        kv_region=(hk // rh, wk // rw),
        topk=index.shape[2],
        num_heads=num_heads,
        qk_head_dim=cq // num_heads,
        v_head_dim=value.shape[-1] // num_heads,
        soft_routing=weight is not None,
        masked_keys=masked_keys,
        needs_grad=needs_grad,
    )
