"""Operator benchmark: BRA on each backend against 7x7 window and global attention (SDPA).

Shapes are the BiFormer-S stages at 224x224 (NHWC tokens, channels, heads, ``n_win``, ``topk``)
and a high-resolution stage-1 map. Each method runs forward (under ``no_grad``) and forward +
backward, timed as the median over steps, with the peak memory of one step. ``level="layer"``
times a whole attention layer (qkv/output projections, BRA's 5x5 LePE); ``level="core"`` only
the attention (queries, keys and values in; routing included for BRA).
"""

from __future__ import annotations

import gc
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from .. import ops
from ..layers import BiLevelRoutingAttention
from ..ops.checks import Problem
from .baselines import (
    GlobalAttention,
    WindowAttention,
    global_attention_core,
    window_attention_core,
)
from .measure import measure_peak, median_ms, time_steps
from .settings import BenchSettings

__all__ = ["OpShape", "SHAPES", "method_names", "run_op_suite"]


@dataclass(frozen=True)
class OpShape:
    """One attention problem: ``size`` tokens (H, W), ``dim`` channels, routing parameters."""

    name: str
    size: tuple[int, int]
    dim: int
    heads: int
    n_win: int
    topk: int
    batch: int | None = None  # None: the suite's batch

    def describe(self) -> str:
        return (f"{self.size[0]}x{self.size[1]} C{self.dim} h{self.heads} "
                f"n_win{self.n_win} topk{self.topk}")


SHAPES = {
    "stage1": OpShape("stage1", (56, 56), 64, 2, 7, 1),
    "stage2": OpShape("stage2", (28, 28), 128, 4, 7, 4),
    "stage3": OpShape("stage3", (14, 14), 256, 8, 7, 16),
    "hires": OpShape("hires", (224, 224), 64, 2, 7, 4, batch=1),  # stage 1 of a 896x896 image
}
MODES = ("fwd", "fwd+bwd")
WINDOW = "window7x7-sdpa"
GLOBAL = "global-sdpa"
CPU_GFLOP_CAP = 300.0  # global attention beyond this per step is skipped on CPU (minutes)


def method_names(settings: BenchSettings) -> list[str]:
    """``bra-<backend>`` for the chosen backends, then the two SDPA baselines."""
    if settings.backends:
        backends = settings.backends
    elif settings.device == "cuda":
        backends = list(ops.BACKENDS)
    else:
        backends = ["reference", "chunked", "flex"]
    return [f"bra-{b}" for b in backends] + [WINDOW, GLOBAL]


def _problem(shape: OpShape, batch: int, settings: BenchSettings, train: bool) -> Problem:
    h, w = shape.size
    d = shape.dim // shape.heads
    region = (h // shape.n_win, w // shape.n_win)
    return Problem(
        device_type=settings.device, dtype=settings.torch_dtype, batch=batch,
        n_win=(shape.n_win, shape.n_win), q_region_size=region, kv_region_size=region,
        topk=shape.topk, num_heads=shape.heads, qk_head_dim=d, v_head_dim=d,
        soft_routing=False, masked_keys=False, needs_grad=train,
    )


def _refusal(shape: OpShape, method: str, batch: int, settings: BenchSettings, train: bool,
             max_gib: float) -> str | None:
    """Why this case is not run (backend refuses, or it would not fit), else None."""
    problem = _problem(shape, batch, settings, train)
    if method.startswith("bra-"):
        backend = method[4:]
        reasons = ops.backend_reasons(backend, problem)
        if reasons:
            return "n/a: " + "; ".join(reasons)
        if backend == "reference":
            need = problem.gathered_bytes() * (3 if train else 1) / 2**30
            if need > max_gib:
                return f"skipped: needs ~{need:.1f} GiB (> {max_gib:.1f} GiB cap)"
    if method == GLOBAL and settings.device != "cuda":
        tokens = shape.size[0] * shape.size[1]
        gflop = 4 * batch * tokens**2 * shape.dim * (3 if train else 1) / 1e9
        if gflop > CPU_GFLOP_CAP:
            return f"skipped: {gflop:.0f} GFLOP per step on CPU (quadratic in {tokens} tokens)"
    return None


def _layer(shape: OpShape, method: str) -> nn.Module:
    if method == WINDOW:
        return WindowAttention(shape.dim, shape.heads)
    if method == GLOBAL:
        return GlobalAttention(shape.dim, shape.heads)
    return BiLevelRoutingAttention(shape.dim, num_heads=shape.heads, n_win=shape.n_win,
                                   topk=shape.topk, side_dwconv=5, auto_pad=False,
                                   backend=method[4:])


def _core(shape: OpShape, method: str) -> Callable[[Tensor, Tensor, Tensor], Tensor]:
    if method == WINDOW:
        return lambda q, k, v: window_attention_core(q, k, v, num_heads=shape.heads)
    if method == GLOBAL:
        return lambda q, k, v: global_attention_core(q, k, v, num_heads=shape.heads)
    backend, scale, n_win = method[4:], shape.dim**-0.5, (shape.n_win, shape.n_win)

    def bra(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        q_r = ops.region_mean(q.detach(), n_win)
        k_r = ops.region_mean(k.detach(), n_win)
        _, index = ops.topk_routing(q_r, k_r, topk=shape.topk, scale=scale)
        return ops.routed_attention(q, k, v, index, n_win=n_win, num_heads=shape.heads,
                                    scale=scale, backend=backend)

    return bra


def _step(shape: OpShape, method: str, batch: int, settings: BenchSettings, train: bool,
          compiled: bool) -> Callable[[], None]:
    """A closure running one forward (or forward + backward) of the case."""
    device, dtype = settings.device, settings.torch_dtype
    gen = torch.Generator().manual_seed(settings.seed)
    h, w = shape.size

    def rand(*size: int) -> Tensor:
        return torch.randn(*size, generator=gen).to(device, dtype).requires_grad_(train)

    params: list[Tensor] = []
    if settings.level == "layer":
        module = _layer(shape, method).to(device, dtype)
        params = list(module.parameters())
        inputs = [rand(batch, h, w, shape.dim)]
        fn: Callable[..., Tensor] = module
    else:
        inputs = [rand(batch, h, w, shape.dim) for _ in range(3)]
        fn = _core(shape, method)
    if compiled:
        fn = torch.compile(fn)
    if not train:

        def forward() -> None:
            with torch.no_grad():
                fn(*inputs)

        return forward
    grad = torch.randn(batch, h, w, shape.dim, generator=gen).to(device, dtype)

    def forward_backward() -> None:
        fn(*inputs).backward(grad)
        for t in inputs + params:
            t.grad = None

    return forward_backward


def _free(device: str) -> None:
    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()


def run_op_suite(settings: BenchSettings, log: Callable[[str], None] = print) -> list[dict]:
    """Run every (shape, method, compiled, mode) case; one JSON-ready dict per case.

    The methods of one (shape, mode) are timed round-robin, one step each in turn, so that a
    busy machine slows them alike; then the peak memory of one step of each is measured.
    """
    cfg = settings.resolved("op")
    methods = method_names(settings)
    variants = [(m, c) for m in methods for c in ((False, True) if settings.compile else (False,))]
    rows: list[dict[str, Any]] = []
    for shape_name in settings.shapes:
        shape = SHAPES[shape_name]
        batch = shape.batch or cfg["batch"]
        for mode in MODES:
            train = mode == "fwd+bwd"
            cases = []
            for method, compiled in variants:
                row: dict[str, Any] = dict(
                    suite="op", shape=shape.name, problem=shape.describe(), method=method,
                    compiled=compiled, mode=mode, batch=batch, level=settings.level,
                    time_ms=None, times_ms=None, peak_mib=None, memory_kind=None, status="ok",
                )
                reason = _refusal(shape, method, batch, settings, train, cfg["max_gib"])
                if reason:
                    row["status"] = reason
                rows.append(row)
                cases.append(row)
            _measure_round_robin(shape, cases, batch, settings, train, cfg)
            for row in cases:
                tag = " compiled" if row["compiled"] else ""
                shown = f"{row['time_ms']:.2f} ms" if row["time_ms"] is not None else ""
                log(f"op {shape.name} {row['method']}{tag} {mode}: {shown or row['status']}")
    order = {m: i for i, m in enumerate(methods)}
    rows.sort(key=lambda r: (settings.shapes.index(r["shape"]), order[r["method"]],
                             r["compiled"], MODES.index(r["mode"])))
    return rows


def _failure(err: BaseException) -> str:
    if isinstance(err, torch.OutOfMemoryError):
        return "out of memory"
    first = str(err).strip().splitlines()[0] if str(err).strip() else ""
    return f"error: {type(err).__name__}: {first[:200]}"


def _measure_round_robin(shape: OpShape, cases: list[dict[str, Any]], batch: int,
                         settings: BenchSettings, train: bool, cfg: dict[str, Any]) -> None:
    """Fill ``time_ms``/``times_ms``/``peak_mib`` (or ``status``) of the runnable ``cases``."""
    device = settings.device
    steps: dict[int, Callable[[], None]] = {}
    try:
        for i, row in enumerate(cases):
            if row["status"] != "ok":
                continue
            try:
                step = _step(shape, row["method"], batch, settings, train, row["compiled"])
                time_steps(step, steps=0, warmup=max(cfg["warmup"], int(row["compiled"])),
                           device=device)
                steps[i] = step
                row["times_ms"] = []
            except Exception as err:  # noqa: BLE001 - one failing case must not end the suite
                row["status"] = _failure(err)
                _free(device)
        for _ in range(cfg["steps"]):
            for i in list(steps):
                try:
                    cases[i]["times_ms"] += time_steps(steps[i], steps=1, warmup=0, device=device)
                except Exception as err:  # noqa: BLE001
                    cases[i]["status"], cases[i]["times_ms"] = _failure(err), None
                    del steps[i]
                    _free(device)
        for i, step in steps.items():
            row = cases[i]
            row["times_ms"] = [round(t, 3) for t in row["times_ms"]]
            row["time_ms"] = median_ms(row["times_ms"])
            try:
                memory = measure_peak(step, device=device)
                row["peak_mib"], row["memory_kind"] = memory.mib, memory.kind
            except Exception as err:  # noqa: BLE001
                row["status"] = _failure(err)
    finally:
        steps.clear()
        _free(device)
