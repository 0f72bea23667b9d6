"""Ahead-of-time compilation of a call's kernels for a GPU target, without a GPU.

``kernel_calls`` gives every kernel of a call with placeholder tensors (meta tensors work);
``compile_spec`` turns one into the ``ASTSource`` arguments by Triton's own launch binder for the
target, so the specialisation (pointer alignment, integers equal to 1 or divisible by 16) is the
one a real launch gets. Used by ``tests/test_triton_sm90_compile.py``::

    for kernel, kwargs in kernel_calls(q, k, v, index, weight, n_win=(7, 7), ...):
        src, options = compile_spec(kernel, kwargs, GPUTarget("cuda", 90, 32))
        triton.compile(src, target=target, options=options)
"""

from __future__ import annotations

import torch
from torch import Tensor

from .kernels import KERNELS
from .plan import KernelPlan, LaunchPlan, get_plan
from .tiles import TileConfig

__all__ = ["compile_spec", "kernel_calls"]


def _buffers(plan: LaunchPlan, query: Tensor, key: Tensor, value: Tensor) -> dict[str, Tensor]:
    geo = plan.geometry
    new = dict(device=query.device)
    f32 = dict(dtype=torch.float32, **new)
    entries = (geo.batch, geo.num_regions * geo.topk)
    lse = torch.empty(plan.lse_shape, **f32)
    parts = [torch.empty(s, **f32) if plan.split else lse for s in plan.part_shapes]
    return dict(
        OUT=torch.empty(plan.out_shape, dtype=query.dtype, **new), LSE=lse,
        DELTA=torch.empty(plan.lse_shape, **f32), DO=torch.empty(plan.out_shape,
                                                                 dtype=query.dtype, **new),
        DQ=torch.empty(query.shape, dtype=query.dtype, **new),
        DK=torch.empty(key.shape, dtype=key.dtype, **new),
        DV=torch.empty(value.shape, dtype=value.dtype, **new),
        DW=torch.empty(plan.dw_part_shape, **f32) if plan.soft else lse,
        SORTED=torch.empty(entries, dtype=torch.int32, **new),
        ENTRIES=torch.empty(entries, dtype=torch.int64, **new),
        OFFSETS=torch.empty(geo.batch, geo.num_regions + 1, dtype=torch.int32, **new),
        PART_K=parts[0], PART_V=parts[1],
    )


def kernel_calls(query: Tensor, key: Tensor, value: Tensor, index: Tensor,
                 weight: Tensor | None = None, *, n_win: tuple[int, int], num_heads: int,
                 scale: float, key_valid: tuple[int, int] | None = None,
                 config: TileConfig | None = None) -> list[tuple[KernelPlan, dict]]:
    """``(kernel plan, launch keyword arguments)`` of the forward, dQ, dK/dV (and reduce)
    kernels of one call, with placeholder buffers on ``query``'s device."""
    plan = get_plan(query, key, value, index.shape[-1], soft=weight is not None,
                    n_win=tuple(n_win), heads=num_heads, scale=scale, key_valid=key_valid,
                    config=config)
    tensors = dict(Q=query, K=key, V=value, IDX=index, W=weight if weight is not None else query,
                   **_buffers(plan, query, key, value))
    do = dict(zip(("sdob", "sdoh", "sdow", "sdoc"), tensors["DO"].stride(), strict=True))
    calls = []
    for kernel in (plan.fwd, plan.dq, plan.dkdv, plan.reduce):
        if kernel is None:
            continue
        names = KERNELS[kernel.name].arg_names
        kwargs = {k: v for k, v in {**tensors, **do}.items() if k in names}
        calls.append((kernel, {**kernel.fixed, **kwargs}))
    return calls


def compile_spec(kernel: KernelPlan, kwargs: dict, target) -> tuple[object, dict]:
    """``(ASTSource, options)`` of one kernel launch for ``target`` (a ``GPUTarget``)."""
    from triton.compiler import ASTSource, make_backend
    from triton.runtime.jit import create_function_from_signature

    fn = KERNELS[kernel.name]
    backend = make_backend(target)
    binder = create_function_from_signature(fn.signature, fn.params, backend)
    options = kernel.options()
    bound, specialization, parsed = binder(**kwargs, **options)
    _, signature, constexprs, attrs = fn._pack_args(backend, options, bound, specialization,
                                                    parsed)
    return ASTSource(fn, signature, constexprs, attrs), options
