"""Run a ``LaunchPlan`` on tensors: allocate the outputs, bind the tensors, launch.

The plan holds every non-tensor argument by name; here only the tensors (and the incoming
gradient's strides, which vary per call) are added.
"""

from __future__ import annotations

import contextlib

import torch
from torch import Tensor

from ...transposed_routing import transpose_routing
from .kernels import KERNELS
from .plan import KernelPlan, LaunchPlan

__all__ = ["backward", "forward", "run"]


def _device_guard(device: torch.device):
    """Launch on the tensors' GPU when it is not the current one."""
    if device.type == "cuda" and device.index != torch.cuda.current_device():
        return torch.cuda.device(device)
    return contextlib.nullcontext()


def run(kernel: KernelPlan, tensors: dict[str, Tensor], extra: dict | None = None) -> None:
    """Launch ``kernel`` with its plan's fixed arguments, ``tensors`` and ``extra`` scalars."""
    device = next(iter(tensors.values())).device
    kwargs = {**kernel.fixed, **tensors, **(extra or {})}
    with _device_guard(device):
        KERNELS[kernel.name][kernel.grid](**kwargs, **kernel.options())


def forward(plan: LaunchPlan, query: Tensor, key: Tensor, value: Tensor, index: Tensor,
            weight: Tensor | None) -> tuple[Tensor, Tensor]:
    """Run the forward kernel.

    Args: NHWC (strided, channel stride 1 for speed) ``query [B, Hq, Wq, Cqk]``,
    ``key [B, Hk, Wk, Cqk]``, ``value [B, Hk, Wk, Cv]`` as planned; contiguous int32
    ``index [B, R, topk]``; optional contiguous ``weight`` of the same shape.

    Returns:
        ``(out, lse)``: ``out`` ``[B, Hq, Wq, Cv]`` NHWC contiguous; ``lse`` ``[B*R, heads, Lq]``
        float32 base-2 log-sum-exp of every query row's scores (``+inf`` for a fully masked row).
    """
    out = torch.empty(plan.out_shape, dtype=query.dtype, device=query.device)
    lse = torch.empty(plan.lse_shape, dtype=torch.float32, device=query.device)
    run(plan.fwd, dict(Q=query, K=key, V=value, IDX=index,
                       W=weight if weight is not None else query, OUT=out, LSE=lse))
    return out, lse


def _grad_buffers(plan: LaunchPlan, query: Tensor, key: Tensor, value: Tensor):
    """dq, dk, dv (views of one packed buffer when planned so) and the packed buffer or None."""
    if plan.packed is not None:
        shape = (*query.shape[:3], sum(plan.packed))
        packed = torch.empty(shape, dtype=query.dtype, device=query.device)
        cqk, cv = plan.packed[0], plan.packed[2]
        return (packed.narrow(-1, 0, cqk), packed.narrow(-1, cqk, cqk),
                packed.narrow(-1, 2 * cqk, cv), packed)
    new = dict(dtype=query.dtype, device=query.device)
    return (torch.empty(query.shape, **new), torch.empty(key.shape, **new),
            torch.empty(value.shape, **new), None)


def backward(plan: LaunchPlan, grad_out: Tensor, query: Tensor, key: Tensor, value: Tensor,
             index: Tensor, weight: Tensor | None, out: Tensor, lse: Tensor,
             weight_grad: bool) -> tuple[Tensor, Tensor | None, Tensor | None, Tensor | None]:
    """Run the dQ and dK/dV kernels (deterministic: every gradient element written once).

    ``out`` is the forward output, ``lse`` its log-sum-exp; ``grad_out`` may be strided.

    Returns:
        ``(dq, dk, dv, dw)``: NHWC contiguous gradients of the query, key and value, or, for a
        packed plan, ``(d_qkv, None, None, dw)`` with ``d_qkv`` ``[B, H, W, 2*Cqk + Cv]``;
        ``dw`` ``[B, R, topk]`` with soft routing and ``weight_grad``, else None.
    """
    dq, dk, dv, packed = _grad_buffers(plan, query, key, value)
    delta = torch.empty_like(lse)
    soft = weight is not None
    dw_part = torch.empty(plan.dw_part_shape, dtype=torch.float32, device=query.device) \
        if soft else lse
    w = weight if soft else query
    do = dict(zip(("sdob", "sdoh", "sdow", "sdoc"), grad_out.stride(), strict=True))
    run(plan.dq, dict(Q=query, K=key, V=value, IDX=index, W=w, OUT=out, DO=grad_out, LSE=lse,
                      DELTA=delta, DQ=dq, DW=dw_part), do)
    routing = transpose_routing(index)
    parts = [torch.empty(s, dtype=torch.float32, device=query.device) if plan.split else delta
             for s in plan.part_shapes]
    shared = dict(SORTED=routing.sorted_regions, OFFSETS=routing.offsets, DK=dk, DV=dv,
                  PART_K=parts[0], PART_V=parts[1])
    run(plan.dkdv, dict(Q=query, K=key, V=value, W=w, DO=grad_out, LSE=lse, DELTA=delta,
                        ENTRIES=routing.entries, **shared), do)
    if plan.reduce is not None:
        run(plan.reduce, shared)
    dw = dw_part.sum(dim=(0, 1)).view(index.shape).to(weight.dtype) \
        if soft and weight_grad else None
    if packed is not None:
        return packed, None, None, dw
    return dq, dk, dv, dw
