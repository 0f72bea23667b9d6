"""FlexAttention backend: routed attention as one block-sparse ``flex_attention`` call.

Tokens are reordered region-major and the routing becomes FlexAttention's sparse block lists
(``flex_mask``: layouts, block lists, ``mask_mod``). Routing ids outside ``[0, num_regions)``
route nothing, so no kernel reads another image's regions.

Soft routing scales routed keys and values by the routing weight ``w``. Scores ``w * s`` are a
``score_mod``; the value scaling is recovered exactly from two log-sum-exps:
``out = flex(score_mod=w*s + log w) * exp(lse(w*s + log w) - lse(w*s))``.

Runs compiled (``torch.compile(flex_attention, dynamic=False)``, one cached kernel per shape).
On CPU FlexAttention has a forward only and returns no log-sum-exp: inference, hard routing.
FlexAttention is imported on first use, not with ``biformer`` (its import pulls sympy, about a
second); ``can_run`` finds out whether it exists without importing it.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from ..checks import Problem
from ..regions import from_regions, to_regions
from .flex_mask import FlexPlan, Layout, build_block_mask, plan_layout

__all__ = ["NAME", "FlexPlan", "Layout", "build_block_mask", "can_run", "plan_layout",
           "routed_attention"]

_FLEX_MODULE = "torch.nn.attention.flex_attention"


def _flex_unavailable() -> str:
    """Why FlexAttention cannot be imported ('' when it can), found without importing it."""
    try:
        found = importlib.util.find_spec(_FLEX_MODULE) is not None
    except (ImportError, ValueError) as err:
        return f"{type(err).__name__}: {err}"
    return "" if found else f"{_FLEX_MODULE} does not exist"


_UNAVAILABLE = _flex_unavailable()
NAME = "flex"
RECOMPILE_LIMIT = 64
_CUDA_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
_CPU_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
_compiled: Callable | None = None


def _cpu_supported() -> bool:
    """Compiled CPU FlexAttention needs AVX2 (x86, Linux or Windows); checked once at import."""
    return (
        bool(torch.cpu._is_avx2_supported())
        and os.environ.get("ATEN_CPU_CAPABILITY") != "default"
        and sys.platform != "darwin"
    )


_CPU_SUPPORTED = _cpu_supported()
_HAS_TRITON = importlib.util.find_spec("triton") is not None  # CUDA kernels are Triton-generated


def can_run(problem: Problem) -> list[str]:
    """Reasons FlexAttention cannot run ``problem`` (empty when it can)."""
    if _UNAVAILABLE:
        return [f"{_FLEX_MODULE} is unavailable ({_UNAVAILABLE}); it needs PyTorch >= 2.5"]
    reasons = []
    if problem.repeated_index:
        reasons.append(
            "the routing index names a key region twice in one row: the reference attends to "
            "it twice, FlexAttention's block mask once; use the chunked backend"
        )
    dev, dtype = problem.device_type, problem.dtype
    if dev == "cuda":
        if not _HAS_TRITON:
            reasons.append("compiled FlexAttention on CUDA needs Triton (pip install triton)")
        if dtype not in _CUDA_DTYPES:
            reasons.append(f"dtype {dtype} is not supported on CUDA (float16, bfloat16, float32)")
        if min(problem.qk_head_dim, problem.v_head_dim) < 16:
            reasons.append(
                f"head dims {problem.qk_head_dim}/{problem.v_head_dim} are below 16, the "
                "smallest FlexAttention supports on CUDA; use fewer heads"
            )
    elif dev == "cpu":
        if not _CPU_SUPPORTED:
            reasons.append("compiled FlexAttention needs an x86 CPU with AVX2 on Linux")
        if dtype not in _CPU_DTYPES:
            reasons.append(f"dtype {dtype} is not supported on CPU (float32, bfloat16, float16)")
        if problem.needs_grad:
            reasons.append(
                "FlexAttention has no CPU backward (inputs require grad); run under "
                "torch.no_grad() or use the chunked backend for training"
            )
        if problem.soft_routing:
            reasons.append(
                "soft routing needs the log-sum-exp, which compiled FlexAttention does not "
                "return on CPU"
            )
    else:
        reasons.append(f"FlexAttention runs on CUDA or CPU tensors, not {dev}")
    return reasons


def _to_sequence(x: Tensor, n_win: tuple[int, int], side: Layout, heads: int) -> Tensor:
    """NHWC ``[B, H, W, C]`` -> ``[B, heads, padded_num_regions * padded, C // heads]``."""
    t = to_regions(x, n_win)  # B, R, L, C
    pad_tokens = side.padded - side.tokens
    pad_regions = side.padded_num_regions - side.num_regions
    if pad_tokens or pad_regions:
        t = F.pad(t, (0, 0, 0, pad_tokens, 0, pad_regions))  # B, Rp, Lp, C
    b, _, _, c = t.shape
    t = t.reshape(b, side.length, heads, c // heads).transpose(1, 2)
    # the CPU kernel template under an outer torch.compile wants plain 4-D buffers, not views
    return t.contiguous() if t.device.type == "cpu" else t


def _flex_call(q, k, v, block_mask, score_mod, scale, want_lse):
    """One FlexAttention call; returns ``(out, lse or None)``."""
    # short sequences would pick the decoding kernel, which has its own tile rules
    options = {"FORCE_USE_FLEX_ATTENTION": True} if q.device.type == "cuda" else None
    kw = dict(score_mod=score_mod, block_mask=block_mask, scale=scale, kernel_options=options)
    from torch.nn.attention import flex_attention as api  # imported on first use

    if not want_lse:
        return api.flex_attention(q, k, v, **kw), None
    if hasattr(api, "AuxRequest"):
        out, aux = api.flex_attention(q, k, v, return_aux=api.AuxRequest(lse=True), **kw)
        return out, aux.lse
    return api.flex_attention(q, k, v, return_lse=True, **kw)  # PyTorch < 2.9


def _run(compiled: bool, *args):
    """Call FlexAttention compiled (one cached kernel per shape) or eagerly (unfused)."""
    global _compiled
    if not compiled or torch.compiler.is_compiling():  # inside torch.compile: traced as is
        return _flex_call(*args)
    if _compiled is None:
        _compiled = torch.compile(_flex_call, dynamic=False)
    limit = max(torch._dynamo.config.recompile_limit, RECOMPILE_LIMIT)
    with torch._dynamo.config.patch(recompile_limit=limit):  # one entry per problem shape
        return _compiled(*args)


def _soft_score_mods(weight: Tensor, plan: FlexPlan):
    """``score_mod``s ``w*s`` and ``w*s + log w`` reading a ``[B, Rq_p, Rk_p + 1]`` weight
    table (the last column, of ids out of range, is never read)."""
    b, r, _ = weight.shape
    q, k = plan.q, plan.k
    table = weight.new_ones(b, q.padded_num_regions, k.padded_num_regions + 1)
    rows = torch.arange(b, device=weight.device)[:, None, None]
    cols = torch.arange(r, device=weight.device)[None, :, None]
    table = table.index_put((rows, cols, plan.columns), weight)
    log_table = table.log()  # a separate tensor: each captured table is indexed once
    lq, lk = q.padded, k.padded

    def scaled(score, b, h, q_idx, kv_idx):
        return score * table[b, q_idx // lq, kv_idx // lk]

    def scaled_logw(score, b, h, q_idx, kv_idx):
        return score * table[b, q_idx // lq, kv_idx // lk] + log_table[b, q_idx // lq, kv_idx // lk]

    return scaled, scaled_logw


def routed_attention(
    query: Tensor,
    key: Tensor,
    value: Tensor,
    index: Tensor,
    weight: Tensor | None,
    *,
    n_win: tuple[int, int],
    num_heads: int,
    scale: float,
    key_valid: tuple[int, int] | None = None,
    compiled: bool = True,
) -> Tensor:
    """Routed attention on FlexAttention, NHWC in and out; see ``biformer.ops.routed_attention``.

    ``compiled=False`` runs FlexAttention's eager, unfused path (it materialises every score:
    for checking small problems only).
    """
    b, hq, wq, _ = query.shape
    if query.device.type == "cpu":  # CPU FlexAttention refuses tensors that require grad
        query, key, value = query.detach(), key.detach(), value.detach()
    r = n_win[0] * n_win[1]
    needs_grad = torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (query, key, value, weight)
    )
    plan = build_block_mask(
        index,
        n_win=n_win,
        q_tokens=(hq // n_win[0]) * (wq // n_win[1]),
        key_size=(key.shape[1], key.shape[2]),
        key_valid=key_valid,
        for_backward=needs_grad,
        exact_mask_mod=not compiled,
    )
    q = _to_sequence(query, n_win, plan.q, num_heads)  # B, m, Nq, d
    k = _to_sequence(key, n_win, plan.k, num_heads)  # B, m, Nk, d
    v = _to_sequence(value, n_win, plan.k, num_heads)  # B, m, Nk, dv
    scale = float(scale)
    if weight is None:
        out, _ = _run(compiled, q, k, v, plan.block_mask, None, scale, False)
    else:
        scaled, scaled_logw = _soft_score_mods(weight.float(), plan)
        _, lse_plain = _run(compiled, q, k, v, plan.block_mask, scaled, scale, True)
        out, lse_logw = _run(compiled, q, k, v, plan.block_mask, scaled_logw, scale, True)
        # fully masked rows (padding) have lse -inf: keep their zeros, and NaN out of backward
        log_ratio = torch.where(torch.isfinite(lse_plain), lse_logw - lse_plain, 0.0)
        out = out * torch.exp(log_ratio).unsqueeze(-1).to(out.dtype)
    out = out.transpose(1, 2).reshape(b, plan.q.padded_num_regions, plan.q.padded, -1)
    out = out[:, :r, : plan.q.tokens]  # B, R, Lq, Cv
    return from_regions(out, n_win, (hq, wq))
