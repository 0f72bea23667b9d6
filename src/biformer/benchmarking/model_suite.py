"""Model benchmark: training and inference throughput and peak memory of whole backbones.

Each model comes from ``timm.create_model`` (BiFormer models are registered by
``import biformer``). A training step is forward, cross-entropy on random labels, backward and
an AdamW step; inference is a forward under ``no_grad``. Reduced precision uses autocast, as
timm's training script does. BiFormer models can be pinned to a routed-attention backend.
"""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Callable, Iterator
from typing import Any

import torch
import torch.nn.functional as F

from .. import ops
from .measure import measure_peak, median_ms, time_steps
from .settings import BenchSettings

__all__ = ["DEFAULT_MODELS", "run_model_suite"]

DEFAULT_MODELS = (
    "biformer_tiny",
    "biformer_small",
    "biformer_base",
    "swin_tiny_patch4_window7_224",
    "swin_small_patch4_window7_224",
    "convnext_tiny",
)


def _autocast(settings: BenchSettings) -> contextlib.AbstractContextManager:
    if settings.dtype == "float32":
        return contextlib.nullcontext()
    return torch.autocast(settings.device, dtype=settings.torch_dtype)


@contextlib.contextmanager
def _backend(name: str | None) -> Iterator[None]:
    if name is None:
        yield
    else:
        with ops.use_backend(name):
            yield


def _variants(settings: BenchSettings, model: str) -> list[tuple[str | None, bool]]:
    backends: list[str | None] = [None]
    if settings.backends and model.startswith("biformer"):
        backends = list(settings.backends)
    compiled = (False, True) if settings.compile else (False,)
    return [(b, c) for b in backends for c in compiled]


def run_model_suite(settings: BenchSettings, log: Callable[[str], None] = print) -> list[dict]:
    """Train and inference throughput and memory, one JSON-ready dict per (model, variant)."""
    import timm

    import biformer  # noqa: F401  (registers the BiFormer models with timm)

    cfg = settings.resolved("model")
    rows = []
    for name in settings.models or DEFAULT_MODELS:
        for backend, compiled in _variants(settings, name):
            row: dict[str, Any] = dict(
                suite="model", model=name, backend=backend or "auto", compiled=compiled,
                batch=cfg["batch"], img_size=settings.img_size, dtype=settings.dtype,
                train_step_ms=None, train_img_s=None, train_peak_mib=None,
                infer_step_ms=None, infer_img_s=None, infer_peak_mib=None, memory_kind=None,
                status="ok",
            )
            try:
                model = timm.create_model(name, pretrained=False)
            except Exception as err:  # noqa: BLE001 - unknown names, missing optional deps
                row["status"] = f"unavailable: {type(err).__name__}: {err}"
                rows.append(row)
                log(f"model {name}: {row['status']}")
                continue
            with _backend(backend):
                row.update(_measure(model, settings, cfg, compiled))
            del model
            gc.collect()
            if settings.device == "cuda":
                torch.cuda.empty_cache()
            rows.append(row)
            tag = f" [{backend}]" if backend else ""
            tag += " compiled" if compiled else ""
            if row["status"] == "ok":
                log(f"model {name}{tag}: train {row['train_img_s']:.1f} img/s, "
                    f"inference {row['infer_img_s']:.1f} img/s")
            else:
                log(f"model {name}{tag}: {row['status']}")
    return rows


def _measure(model: torch.nn.Module, settings: BenchSettings, cfg: dict[str, Any],
             compiled: bool) -> dict[str, Any]:
    device, batch, size = settings.device, cfg["batch"], settings.img_size
    gen = torch.Generator().manual_seed(settings.seed)
    x = torch.randn(batch, 3, size, size, generator=gen).to(device)
    num_classes = getattr(model, "num_classes", 1000) or 1000
    y = torch.randint(0, num_classes, (batch,), generator=gen).to(device)
    model = model.to(device)
    run = torch.compile(model) if compiled else model
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    warmup = max(cfg["warmup"], int(compiled))
    out: dict[str, Any] = {}
    try:
        model.train()

        def train_step() -> None:
            opt.zero_grad(set_to_none=True)
            with _autocast(settings):
                loss = F.cross_entropy(run(x), y)
            loss.backward()
            opt.step()

        times = time_steps(train_step, steps=cfg["steps"], warmup=warmup, device=device)
        memory = measure_peak(train_step, device=device)
        step = median_ms(times)
        out.update(train_step_ms=step, train_img_s=batch / step * 1e3,
                   train_peak_mib=memory.mib, memory_kind=memory.kind)
        opt.zero_grad(set_to_none=True)
        model.eval()

        def infer_step() -> None:
            with torch.no_grad(), _autocast(settings):
                run(x)

        times = time_steps(infer_step, steps=cfg["steps"], warmup=warmup, device=device)
        memory = measure_peak(infer_step, device=device)
        step = median_ms(times)
        out.update(infer_step_ms=step, infer_img_s=batch / step * 1e3,
                   infer_peak_mib=memory.mib)
    except torch.OutOfMemoryError:
        out["status"] = "out of memory"
    except Exception as err:  # noqa: BLE001 - one failing model must not end the suite
        first = str(err).strip().splitlines()[0] if str(err).strip() else ""
        out["status"] = f"error: {type(err).__name__}: {first[:200]}"
    return out
