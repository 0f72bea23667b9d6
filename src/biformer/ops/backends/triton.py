"""Triton backend: fused gather + attention kernels, forward and backward.

The kernels (``triton_kernels.py``) read queries, keys and values from strided NHWC tensors by
address arithmetic and never materialise the gathered keys/values or the attention matrix. The
backward pass is FlashAttention-2 style: a dQ kernel over query regions (which also stores
``delta = rowsum(O * dO)``) and a dK/dV kernel over key regions that walks the transposed routing,
so every gradient element is written exactly once: no atomics, bit-identical reruns.

Supported: float32, float16, bfloat16; any region size (keys and queries tiled, online softmax
for long key lists); head dims up to 256 (padded to a power of two with masks); query and key
widths different from the value width; per-region KV downsampling (smaller key regions); soft
routing (with a gradient for the weights; topk up to 128); masked padded keys (``key_valid``;
a query whose every routed key is masked gets zeros, where the reference gives NaN).

The forward and backward are ``torch.library.custom_op``s (``biformer::routed_attention_fwd``,
``biformer::routed_attention_bwd``) with fake implementations and a registered autograd formula,
so ``torch.compile(..., fullgraph=True)`` sees one opaque op without a graph break.

On CPU the kernels only run in the Triton interpreter (``TRITON_INTERPRET=1`` set before Triton
is imported), which the tests use; otherwise this backend refuses CPU tensors.
"""

import importlib.util
import os

import torch
from torch import Tensor

from ..checks import Problem

NAME = "triton"
SUPPORTED_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
MAX_HEAD_DIM = 256
MAX_SOFT_TOPK = 128

_HAS_TRITON = importlib.util.find_spec("triton") is not None


def _kernels():
    from . import triton_kernels

    return triton_kernels


def _interpreted_kernels() -> bool:
    try:
        return _kernels().interpreting()
    except ImportError:  # a broken triton install: refuse rather than fail the dispatch
        return False


def _interpret_requested() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0").strip().lower() in ("1", "true", "yes", "on")


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")


def can_run(problem: Problem) -> list[str]:
    """Reasons this backend cannot run ``problem`` (empty when it can)."""
    if not _HAS_TRITON:
        return ["triton is not installed (pip install triton)"]
    reasons = []
    if problem.device_type == "cpu":
        if not _interpret_requested():
            reasons.append(
                "tensors are on cpu and TRITON_INTERPRET is not set (the Triton kernels need a "
                "CUDA GPU; TRITON_INTERPRET=1 runs them slowly on CPU, for tests)"
            )
        elif not _interpreted_kernels():
            reasons.append(
                "tensors are on cpu but the Triton kernels were built for the GPU "
                "(set TRITON_INTERPRET=1 before triton is first imported)"
            )
    elif problem.device_type != "cuda":
        reasons.append(f"tensors are on {problem.device_type}; the Triton kernels need CUDA")
    if problem.dtype not in SUPPORTED_DTYPES:
        reasons.append(
            f"dtype {_dtype_name(problem.dtype)} is not supported (float32, float16, bfloat16)"
        )
    for what, dim in (("head_dim", problem.qk_head_dim), ("value head_dim", problem.v_head_dim)):
        if dim > MAX_HEAD_DIM:
            reasons.append(f"{what} {dim} unsupported (at most {MAX_HEAD_DIM})")
    if problem.soft_routing and problem.topk > MAX_SOFT_TOPK:
        reasons.append(
            f"soft routing with topk={problem.topk} not supported by this kernel "
            f"(at most {MAX_SOFT_TOPK})"
        )
    return reasons


# ----------------------------------------------------------------------------------------------
# custom ops


def _lse_shape(query: Tensor, regions: list[int], num_heads: int) -> tuple[int, int, int]:
    b, hq, wq, _ = query.shape
    rh, rw = regions
    return b * rh * rw, num_heads, (hq // rh) * (wq // rw)


def _valid(key_valid: list[int] | None) -> tuple[int, int] | None:
    return None if key_valid is None else (int(key_valid[0]), int(key_valid[1]))


@torch.library.custom_op("biformer::routed_attention_fwd", mutates_args=())
def routed_attention_fwd(
    query: Tensor,
    key: Tensor,
    value: Tensor,
    index: Tensor,
    weight: Tensor | None,
    regions: list[int],
    num_heads: int,
    scale: float,
    key_valid: list[int] | None,
) -> tuple[Tensor, Tensor]:
    """Fused routed attention forward: ``(out [B, Hq, Wq, Cv], lse [B*R, heads, Lq] fp32)``."""
    return _kernels().forward(
        query, key, value, index, weight, regions=(regions[0], regions[1]),
        num_heads=num_heads, scale=scale, key_valid=_valid(key_valid),
    )


@routed_attention_fwd.register_fake
def _routed_attention_fwd_fake(query, key, value, index, weight, regions, num_heads, scale,
                               key_valid):
    b, hq, wq, _ = query.shape
    out = query.new_empty(b, hq, wq, value.shape[-1])
    lse = query.new_empty(_lse_shape(query, regions, num_heads), dtype=torch.float32)
    return out, lse


@torch.library.custom_op("biformer::routed_attention_bwd", mutates_args=())
def routed_attention_bwd(
    grad_out: Tensor,
    query: Tensor,
    key: Tensor,
    value: Tensor,
    index: Tensor,
    weight: Tensor | None,
    out: Tensor,
    lse: Tensor,
    regions: list[int],
    num_heads: int,
    scale: float,
    key_valid: list[int] | None,
    weight_grad: bool,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Fused backward: ``(dq, dk, dv, dw)``; ``dw`` is empty unless ``weight_grad``."""
    dq, dk, dv, dw = _kernels().backward(
        grad_out, query, key, value, index, weight, out, lse,
        regions=(regions[0], regions[1]), num_heads=num_heads, scale=scale,
        key_valid=_valid(key_valid), weight_grad=weight_grad,
    )
    if dw is None:
        dw = query.new_empty(0)
    return dq, dk, dv, dw


@routed_attention_bwd.register_fake
def _routed_attention_bwd_fake(grad_out, query, key, value, index, weight, out, lse, regions,
                               num_heads, scale, key_valid, weight_grad):
    dq = query.new_empty(query.shape)
    dk = key.new_empty(key.shape)
    dv = value.new_empty(value.shape)
    if weight is not None and weight_grad:
        dw = weight.new_empty(index.shape)
    else:
        dw = query.new_empty(0)
    return dq, dk, dv, dw


def _setup_context(ctx, inputs, output):
    query, key, value, index, weight, regions, num_heads, scale, key_valid = inputs
    out, lse = output
    ctx.save_for_backward(query, key, value, index, weight, out, lse)
    ctx.args = (regions, num_heads, scale, key_valid)


def _backward(ctx, grad_out, grad_lse):
    query, key, value, index, weight, out, lse = ctx.saved_tensors
    regions, num_heads, scale, key_valid = ctx.args
    weight_grad = weight is not None and ctx.needs_input_grad[4]
    dq, dk, dv, dw = routed_attention_bwd(
        grad_out, query, key, value, index, weight, out, lse, regions, num_heads, scale,
        key_valid, weight_grad,
    )
    return dq, dk, dv, None, dw if weight_grad else None, None, None, None, None


routed_attention_fwd.register_autograd(_backward, setup_context=_setup_context)


def routed_attention(
    query: Tensor,
    key: Tensor,
    value: Tensor,
    index: Tensor,
    weight: Tensor | None,
    *,
    regions: tuple[int, int],
    num_heads: int,
    scale: float,
    key_valid: tuple[int, int] | None = None,
) -> Tensor:
    """Routed attention with the fused kernels, NHWC in and out.

    ``query [B, Hq, Wq, Cqk]``, ``key [B, Hk, Wk, Cqk]``, ``value [B, Hk, Wk, Cv]`` may be strided
    views (e.g. slices of one projection); ``index``/``weight`` ``[B, R, topk]``. Returns
    ``[B, Hq, Wq, Cv]`` NHWC contiguous; see ``biformer.ops.routed_attention``.
    """
    if weight is not None:
        weight = weight.contiguous()
    out, _ = routed_attention_fwd(
        query, key, value, index.contiguous(), weight, [int(regions[0]), int(regions[1])],
        int(num_heads), float(scale),
        None if key_valid is None else [int(key_valid[0]), int(key_valid[1])],
    )
    return out
