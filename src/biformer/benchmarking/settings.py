"""Settings shared by the operator and model benchmarks (filled from ``biformer bench``)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import torch

__all__ = ["BenchSettings", "DTYPES"]

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class BenchSettings:
    """What to run and how.

    ``batch``/``steps``/``warmup`` of None pick per-suite defaults for the device (see
    ``resolved``). ``max_gib`` skips cases estimated to need more memory than that.
    """

    device: str = "cpu"
    dtype: str = "float32"
    batch: int | None = None
    backends: list[str] | None = None
    compile: bool = False
    steps: int | None = None
    warmup: int | None = None
    level: str = "layer"
    shapes: list[str] = field(default_factory=lambda: ["stage1", "stage2", "stage3", "hires"])
    models: list[str] | None = None
    img_size: int = 224
    max_gib: float | None = None
    seed: int = 0

    @property
    def torch_dtype(self) -> torch.dtype:
        return DTYPES[self.dtype]

    def resolved(self, suite: str) -> dict[str, Any]:
        """Batch, steps, warmup and memory cap for ``suite`` (``"op"`` or ``"model"``)."""
        cuda = self.device == "cuda"
        if suite == "op":
            defaults = dict(batch=128 if cuda else 8, steps=50 if cuda else 10,
                            warmup=10 if cuda else 2)
        else:
            defaults = dict(batch=128 if cuda else 8, steps=20 if cuda else 3,
                            warmup=5 if cuda else 1)
        for name in ("batch", "steps", "warmup"):
            if getattr(self, name) is not None:
                defaults[name] = getattr(self, name)
        if self.max_gib is not None:
            defaults["max_gib"] = self.max_gib
        elif cuda:
            total = torch.cuda.get_device_properties(torch.cuda.current_device()).total_memory
            defaults["max_gib"] = 0.8 * total / 2**30
        else:
            defaults["max_gib"] = 6.0
        return defaults

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)
