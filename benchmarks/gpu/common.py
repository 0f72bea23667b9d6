"""Shared pieces of the GPU check scripts: paths, timers, error measures, verdict lines.

Timers: ``eager_ms`` (CUDA events around each call, host overhead included: "as called"),
``kernel_ms`` (CUDA-graph replay of the calls, so only the kernels' time counts; profiler kernel
durations when a graph cannot be captured). Verdicts are appended, one line each, to
``OUT/verdicts.txt`` as soon as they are known, so a step cut short by its time limit keeps
the ones it reached.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT / "src") not in sys.path:  # running from a source checkout
    sys.path.insert(0, str(ROOT / "src"))

import torch  # noqa: E402

__all__ = ["ROOT", "Verdicts", "copy_bandwidth", "eager_ms", "kernel_ms", "max_err",
           "rel_rms", "sync"]


def sync(device: torch.device | str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def eager_ms(fn: Callable[[], object], device, *, reps: int = 20, warmup: int = 3) -> float:
    """Median milliseconds per call as called (CUDA events on a GPU, wall clock on CPU)."""
    from biformer.benchmarking.measure import median_ms, time_steps

    return median_ms(time_steps(fn, steps=reps, warmup=warmup, device=torch.device(device).type))


def _graph_ms(fn: Callable[[], object], reps: int) -> float:
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):  # warm-up on a side stream, as graph capture requires
        for _ in range(3):
            fn()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    graph.replay()
    torch.cuda.synchronize()
    start, end = (torch.cuda.Event(enable_timing=True) for _ in range(2))
    start.record()
    for _ in range(reps):
        graph.replay()
    end.record()
    end.synchronize()
    return start.elapsed_time(end) / reps


def _profiled_ms(fn: Callable[[], object], reps: int) -> float:
    from torch.profiler import ProfilerActivity, profile

    fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(reps):
            fn()
        torch.cuda.synchronize()
    total_us = sum(e.self_device_time_total for e in prof.key_averages())
    return total_us / 1e3 / reps


def kernel_ms(fn: Callable[[], object], device, *, reps: int = 20) -> tuple[float, str]:
    """Kernel milliseconds per call and how they were measured (``graph``, ``profiler``, or
    ``wall`` on CPU, where there is no kernel time to separate)."""
    if torch.device(device).type != "cuda":
        return eager_ms(fn, device, reps=reps, warmup=1), "wall"
    try:
        return _graph_ms(fn, reps), "graph"
    except Exception:  # noqa: BLE001 - a call that cannot be captured: profiler durations
        torch.cuda.synchronize()
        return _profiled_ms(fn, reps), "profiler"


def copy_bandwidth(device) -> float:
    """Device copy bandwidth in bytes/s, counting bytes read and written."""
    n = (1 << 30) if torch.device(device).type == "cuda" else (1 << 22)
    src = torch.empty(n, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    ms = eager_ms(lambda: dst.copy_(src), device, reps=10)
    return 2 * n / (ms * 1e-3)


def rel_rms(got, want) -> float:
    """Relative RMS error ``||got - want|| / ||want||`` in float64."""
    got, want = got.double(), want.double()
    return ((got - want).square().mean().sqrt()
            / want.square().mean().sqrt().clamp_min(1e-30)).item()


def max_err(got, want) -> float:
    """Largest absolute difference, in float64."""
    return (got.double() - want.double()).abs().max().item()


class Verdicts:
    """Verdict lines, ``(x) what: MET|MISSED numbers``, appended to ``OUT/verdicts.txt`` and
    kept as JSON in ``OUT/verdicts.json``."""

    def __init__(self, out_dir: Path | None):
        self.out_dir = out_dir
        self.rows: list[dict] = []

    def add(self, tag: str, what: str, met: bool, numbers: str) -> str:
        line = f"({tag}) {what}: {'MET' if met else 'MISSED'} {numbers}"
        self.rows.append(dict(tag=tag, what=what, met=met, numbers=numbers, line=line))
        print(f"VERDICT {line}", flush=True)
        if self.out_dir is not None:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            with open(self.out_dir / "verdicts.txt", "a") as f:
                f.write(line + "\n")
            known = []
            path = self.out_dir / "verdicts.json"
            if path.exists():
                known = json.loads(path.read_text())
            path.write_text(json.dumps([*known, self.rows[-1]], indent=2))
        return line
