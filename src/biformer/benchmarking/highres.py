"""One BRA2d forward + backward on a high-resolution map, measured in a fresh process.

A fresh process per measurement keeps one run's allocator state and caches out of the next, and
its own peak resident set (Linux ``VmHWM``) is what the step needed: ``measure_in_subprocess``
starts ``python -m biformer.benchmarking.highres``, which builds the layer and the input, then
runs one step under ``measure_peak`` and prints one JSON line. Used by
``benchmarks/highres_memory.py`` and by the memory test of the chunked backend.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from typing import Any

import torch

from ..layers import BRA2d
from ..layers.bra2d import region_layout
from ..ops.checks import Problem
from .measure import measure_peak

__all__ = ["measure_in_subprocess", "reference_need", "run_step"]

Size = tuple[int, int]


def reference_need(size: Size, channels: int, heads: int, n_win: int, topk: int) -> int:
    """Bytes the gather-based reference needs for one fp32 BRA2d call on ``1 x C x H x W``:
    gathered keys/values plus the attention matrix, forward only (``Problem.gathered_bytes``)."""
    region_size, grid = region_layout(size, n_win)
    d = channels // heads
    problem = Problem(
        device_type="cpu", dtype=torch.float32, batch=1, n_win=grid, q_region_size=region_size,
        kv_region_size=region_size, topk=min(topk, grid[0] * grid[1]), num_heads=heads,
        qk_head_dim=d, v_head_dim=d, soft_routing=False, masked_keys=False, needs_grad=True,
    )
    return problem.gathered_bytes()


def run_step(backend: str, size: Size, channels: int, heads: int, n_win: int,
             topk: int) -> dict[str, Any]:
    """Forward (+ backward unless ``backend == "flex"``, which has no CPU backward) of a seeded
    ``BRA2d`` on ``1 x channels x H x W`` in this process.

    Returns ``{"fwd_s", "bwd_s" (None for flex), "growth_bytes" (None without Linux /proc),
    "finite"}``; flex is compiled by a first, unmeasured call.
    """
    torch.manual_seed(0)
    layer = BRA2d(channels, num_heads=heads, n_win=n_win, topk=topk, backend=backend)
    train = backend != "flex"
    x = torch.randn(1, channels, *size, requires_grad=train)
    grad = torch.randn(1, channels, *size)
    if not train:
        with torch.no_grad():
            layer(x)
    times: dict[str, float | None] = {"bwd_s": None}
    finite = []

    def step() -> None:
        t0 = time.perf_counter()
        with torch.set_grad_enabled(train):
            out = layer(x)
        times["fwd_s"] = time.perf_counter() - t0
        finite.append(bool(torch.isfinite(out).all()))
        if train:
            t1 = time.perf_counter()
            out.backward(grad)
            times["bwd_s"] = time.perf_counter() - t1
            finite.append(bool(torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0))

    reading = measure_peak(step, device="cpu")
    growth = None if reading.mib is None else int(reading.mib * 2**20)
    return {**times, "growth_bytes": growth, "finite": all(finite)}


def measure_in_subprocess(backend: str, size: Size, channels: int, heads: int, n_win: int,
                          topk: int, *, chunk_mb: float | None = None, threads: int | None = None,
                          timeout: float = 3600.0) -> dict[str, Any]:
    """``run_step`` in a fresh Python process; adds ``"status"`` (``"ok"`` or why not)."""
    env = dict(os.environ)
    if chunk_mb:
        env["BIFORMER_CHUNK_MB"] = str(chunk_mb)
    cmd = [sys.executable, "-m", __name__, backend, f"{size[0]}x{size[1]}",
           *(str(v) for v in (channels, heads, n_win, topk))]
    if threads:
        cmd += ["--threads", str(threads)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"status": f"timed out after {timeout:g} s"}
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["?"])[-1]
        return {"status": f"failed ({last[:200]})"}
    return {"status": "ok", **json.loads(proc.stdout.strip().splitlines()[-1])}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="one BRA2d step; prints one JSON line")
    parser.add_argument("backend")
    parser.add_argument("size", help="HxW")
    parser.add_argument("channels", type=int)
    parser.add_argument("heads", type=int)
    parser.add_argument("n_win", type=int)
    parser.add_argument("topk", type=int)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    h, w = (int(v) for v in args.size.lower().split("x"))
    result = run_step(args.backend, (h, w), args.channels, args.heads, args.n_win, args.topk)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
