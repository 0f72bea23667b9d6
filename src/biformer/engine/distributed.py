"""Distributed runs: initialisation from torchrun's environment, reductions, rank helpers.

``torchrun`` (``python -m torch.distributed.run``) sets ``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``,
``MASTER_ADDR`` and ``MASTER_PORT`` for every process; :func:`init_distributed` reads them and
joins the process group with NCCL on CUDA devices and gloo on CPU. A plain ``python -m biformer``
run is a world of one and never touches ``torch.distributed``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

from ..errors import CommandError

__all__ = ["DistEnv", "init_distributed", "resolve_device", "shutdown_distributed"]


@dataclass(frozen=True)
class DistEnv:
    """Where this process stands: its global rank, the world size and its device."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the only process that prints progress and writes files."""
        return self.rank == 0

    def all_reduce_sum(self, values: list[float]) -> list[float]:
        """Sum a list of numbers over all ranks (float64); returns the list unchanged alone."""
        if not self.distributed:
            return list(values)
        t = torch.tensor(values, dtype=torch.float64, device=self._comm_device())
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return t.tolist()

    def any(self, flag: bool) -> bool:
        """True on every rank when ``flag`` is true on at least one rank."""
        if not self.distributed:
            return flag
        t = torch.tensor([1 if flag else 0], dtype=torch.int32, device=self._comm_device())
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return bool(t.item())

    def gather_objects(self, obj: Any) -> list[Any]:
        """Every rank's ``obj`` (picklable), in rank order, on every rank."""
        if not self.distributed:
            return [obj]
        out: list[Any] = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out

    def _comm_device(self) -> torch.device:
        # NCCL only moves CUDA tensors; gloo moves CPU tensors.
        return self.device if dist.get_backend() == "nccl" else torch.device("cpu")


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise CommandError(f"environment variable {name}={raw!r} is not an integer") from None


def resolve_device(spec: str | None) -> torch.device:
    """``--device``: ``cuda``, ``cuda:N`` or ``cpu`` (default: CUDA when available), checked."""
    if spec is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(spec)
    except (RuntimeError, ValueError):
        raise CommandError(f"--device {spec!r}: not a device; use cuda, cuda:N or cpu") from None
    if device.type not in ("cuda", "cpu"):
        raise CommandError(f"--device must be cuda, cuda:N or cpu, got {spec!r}")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise CommandError(f"--device {spec} was asked for but no CUDA device is available; "
                               "use --device cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise CommandError(f"--device {spec}: this machine has "
                               f"{torch.cuda.device_count()} CUDA device(s)")
    return device


def init_distributed(
    *, device: str | None = None, backend: str | None = None, timeout_s: float = 1800.0
) -> DistEnv:
    """Join the process group when launched by torchrun; pick this process's device.

    Args:
        device: ``"cuda"``, ``"cpu"`` or ``None`` (CUDA when available). Under torchrun each process
            takes ``cuda:LOCAL_RANK``.
        backend: process-group backend; default ``nccl`` on CUDA, ``gloo`` on CPU.
        timeout_s: collective timeout.

    Returns:
        the :class:`DistEnv` of this process (a world of one without torchrun).
    """
    device = str(resolve_device(device))
    device_type = device.split(":", 1)[0]

    world_size = _env_int("WORLD_SIZE", 1)
    local_rank = _env_int("LOCAL_RANK", 0)
    if world_size <= 1:
        dev = torch.device(device)
        if dev.type == "cuda" and dev.index is None:
            dev = torch.device("cuda", torch.cuda.current_device())
        return DistEnv(device=dev)

    if device_type == "cuda":
        if local_rank >= torch.cuda.device_count():
            raise CommandError(
                f"LOCAL_RANK={local_rank} but this node has {torch.cuda.device_count()} CUDA "
                "device(s); lower --nproc_per_node"
            )
        dev = torch.device("cuda", local_rank)
        torch.cuda.set_device(dev)
    else:
        dev = torch.device("cpu")
    backend = backend or ("nccl" if device_type == "cuda" else "gloo")
    if not dist.is_initialized():
        kwargs: dict[str, Any] = {"backend": backend, "timeout": timedelta(seconds=timeout_s)}
        if backend == "nccl":
            kwargs["device_id"] = dev
        dist.init_process_group(**kwargs)
    return DistEnv(
        rank=dist.get_rank(), world_size=dist.get_world_size(), local_rank=local_rank, device=dev
    )


def shutdown_distributed() -> None:
    """Leave the process group (no-op when none was joined)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
