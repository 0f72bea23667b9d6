"""Timing (median over steps) and peak memory of one step, on CPU and CUDA.

GPU: CUDA events around each step, ``torch.cuda.max_memory_allocated`` above what was allocated
before the step. CPU: wall clock, and the growth of the process's peak resident set (Linux
``VmHWM``, reset through ``/proc/self/clear_refs`` after ``malloc_trim``) over one step. The CPU
figure covers everything the step makes resident (tensors, allocator slack, kernel workspaces),
not tensors alone; ``tracemalloc`` cannot see tensor storage at all.
"""

from __future__ import annotations

import ctypes
import gc
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

__all__ = ["MemoryReading", "cpu_peak_supported", "measure_peak", "median_ms", "time_steps"]


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def time_steps(fn: Callable[[], object], *, steps: int, warmup: int, device: str) -> list[float]:
    """Run ``fn`` ``warmup`` times, then time ``steps`` calls; returns milliseconds per call."""
    for _ in range(warmup):
        fn()
    _sync(device)
    times = []
    if device == "cuda":
        for _ in range(steps):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
    else:
        for _ in range(steps):
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
    return times


def median_ms(times: list[float]) -> float:
    return float(statistics.median(times))


@dataclass(frozen=True)
class MemoryReading:
    """Peak memory of one step in MiB (None when it cannot be measured) and what it means."""

    mib: float | None
    kind: str


def _status_kib(field: str) -> int | None:
    try:
        with open("/proc/self/status", encoding="utf-8") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        return None
    return None


def _reset_peak_rss() -> bool:
    try:
        with open("/proc/self/clear_refs", "w", encoding="utf-8") as f:
            f.write("5")  # resets VmHWM to the current resident set (Linux >= 4.0)
        return True
    except OSError:
        return False


def _trim_heap() -> None:
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)  # hand freed heap pages back to the system
    except (OSError, AttributeError):
        pass


def cpu_peak_supported() -> bool:
    """Whether this process can measure its own peak resident-set growth."""
    return _status_kib("VmHWM") is not None and _reset_peak_rss()


def measure_peak(fn: Callable[[], object], *, device: str) -> MemoryReading:
    """Peak memory of one call of ``fn`` above what was in use before it."""
    gc.collect()
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        before = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        fn()
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() - before
        return MemoryReading(peak / 2**20, "cuda max_memory_allocated growth")
    _trim_heap()
    before = _status_kib("VmRSS")
    if before is None or not _reset_peak_rss():
        return MemoryReading(None, "unavailable (needs Linux /proc)")
    fn()
    peak = _status_kib("VmHWM")
    if peak is None:
        return MemoryReading(None, "unavailable (needs Linux /proc)")
    return MemoryReading(max(peak - before, 0) / 1024, "cpu peak RSS growth")
