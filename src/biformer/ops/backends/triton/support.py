"""What the Triton backend accepts: ``can_run(problem)`` and the interpreter switch.

Nothing here imports Triton, so the dispatcher can ask for reasons on a machine without it.
"""

from __future__ import annotations

import importlib.util
import os

import torch

from ...checks import Problem

__all__ = ["MAX_HEAD_DIM", "MAX_SOFT_TOPK", "SUPPORTED_DTYPES", "can_run", "has_triton"]

SUPPORTED_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
MAX_HEAD_DIM = 256
MAX_SOFT_TOPK = 128

_HAS_TRITON = importlib.util.find_spec("triton") is not None


def has_triton() -> bool:
    """True when the ``triton`` package is importable."""
    return _HAS_TRITON


def interpret_requested() -> bool:
    """True when ``TRITON_INTERPRET`` asks for the CPU interpreter."""
    return os.environ.get("TRITON_INTERPRET", "0").strip().lower() in ("1", "true", "yes", "on")


def kernels_interpreted() -> bool:
    """True when the kernels were built for the interpreter (``TRITON_INTERPRET=1`` at import)."""
    try:
        from .kernels import interpreting
    except ImportError:  # a broken triton install: refuse rather than fail the dispatch
        return False
    return interpreting()


def _device_reasons(device_type: str) -> list[str]:
    if device_type == "cuda":
        return []
    if device_type != "cpu":
        return [f"tensors are on {device_type}; the Triton kernels need CUDA"]
    if not interpret_requested():
        return [
            "tensors are on cpu and TRITON_INTERPRET is not set (the Triton kernels need a "
            "CUDA GPU; TRITON_INTERPRET=1 runs them slowly on CPU, for tests)"
        ]
    if not kernels_interpreted():
        return [
            "tensors are on cpu but the Triton kernels were built for the GPU "
            "(set TRITON_INTERPRET=1 before triton is first imported)"
        ]
    return []


def can_run(problem: Problem) -> list[str]:
    """Reasons this backend cannot run ``problem`` (empty when it can)."""
    if not has_triton():
        return ["triton is not installed (pip install triton)"]
    reasons = _device_reasons(problem.device_type)
    if problem.dtype not in SUPPORTED_DTYPES:
        name = str(problem.dtype).replace("torch.", "")
        reasons.append(f"dtype {name} is not supported (float32, float16, bfloat16)")
    for what, dim in (("head_dim", problem.qk_head_dim), ("value head_dim", problem.v_head_dim)):
        if dim > MAX_HEAD_DIM:
            reasons.append(f"{what} {dim} unsupported (at most {MAX_HEAD_DIM})")
    if problem.soft_routing and problem.topk > MAX_SOFT_TOPK:
        reasons.append(
            f"soft routing with topk={problem.topk} not supported by this kernel "
            f"(at most {MAX_SOFT_TOPK})"
        )
    return reasons
