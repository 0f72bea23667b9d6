"""What a benchmark ran on: machine, library versions, load (recorded with every result)."""

from __future__ import annotations

import os
import platform
from typing import Any

import torch

__all__ = ["cpu_model", "describe_environment", "load_average"]


def cpu_model() -> str:
    """The CPU's marketing name (``/proc/cpuinfo`` on Linux, else ``platform.processor()``)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def load_average() -> list[float] | None:
    """1/5/15-minute load averages (other processes competing for the cores), if known."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except (AttributeError, OSError):
        return None


def _version(module_name: str) -> str | None:
    try:
        module = __import__(module_name)
    except Exception:  # noqa: BLE001 - an optional package may fail to import in many ways
        return None
    return getattr(module, "__version__", "unknown")


def describe_environment(device: str) -> dict[str, Any]:
    """Machine (CPU model, cores, threads, GPU) and versions, as a JSON-ready dict."""
    machine: dict[str, Any] = {
        "cpu": cpu_model(),
        "cpu_cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "load_average": load_average(),
    }
    try:
        with open("/proc/meminfo", encoding="utf-8") as f:
            machine["memory_gib"] = round(int(f.readline().split()[1]) / 2**20, 1)
    except (OSError, ValueError, IndexError):
        pass
    if device == "cuda" and torch.cuda.is_available():
        props = torch.cuda.get_device_properties(torch.cuda.current_device())
        machine["gpu"] = props.name
        machine["gpu_memory_gib"] = round(props.total_memory / 2**30, 1)
        machine["cuda"] = torch.version.cuda
    versions = {name: _version(name) for name in ("torch", "timm", "triton", "biformer")}
    return {"machine": machine, "versions": versions}
