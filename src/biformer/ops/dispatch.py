"""Which backend runs a routed-attention call: one rule, four levels.

Precedence, highest first:

1. an explicit backend for this call: ``routed_attention(..., backend="chunked")``, which is what
   a layer passes when its ``backend`` attribute is set (``layer.backend = "reference"``, or
   ``BRA2d(..., backend="reference")``); ``None`` and ``"auto"`` mean "not set here";
2. the innermost ``with biformer.ops.use_backend(name):`` block;
3. the process default, ``biformer.ops.set_default_backend(name)``, which starts as the
   ``BIFORMER_BACKEND`` environment variable (read once, at import) or ``"auto"``;
4. the automatic choice: ``triton`` on CUDA when it can run, else ``flex``, else ``chunked`` when
   the gather-based reference would need more than ``BIFORMER_GATHER_LIMIT_MB`` (default 0.25
   MiB), else ``reference``. While a model is traced for export (``torch.jit.trace``, ONNX
   export, ``torch.export``) the automatic choice is always ``reference``, the backend made of
   plain, exportable PyTorch ops.

A backend named at levels 1-3 must be able to run the call: otherwise ``BackendUnavailable``
lists its reasons (every backend explains why it refuses, ``can_run(problem)``). Under
``torch.compile`` the choice is made while tracing and the compiled graph holds the chosen
backend; Dynamo guards on the inputs of the rule (a layer's ``backend``, the ``use_backend``
stack, the default), so changing any of them later recompiles once for the new choice instead of
silently running the old one.

The low gather limit is measured: on CPU the chunked backend is faster than the reference from the
smallest BiFormer stage shape upwards (docs/benchmarks.md); only toy problems, where both take
well under a millisecond, go to the reference.
"""

from __future__ import annotations

import importlib
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from types import ModuleType

import torch

from .arguments import env_mib
from .checks import Problem

__all__ = [
    "AUTO",
    "BACKENDS",
    "BackendUnavailable",
    "available_backends",
    "backend_reasons",
    "choose_backend",
    "get_backend",
    "get_default_backend",
    "set_default_backend",
    "use_backend",
]

logger = logging.getLogger("biformer.ops")

AUTO = "auto"
BACKENDS = ("triton", "flex", "chunked", "reference")
_MODULES = {
    "reference": "biformer.ops.backends.reference",
    "chunked": "biformer.ops.backends.chunked",
    "flex": "biformer.ops.backends.flex",
    "triton": "biformer.ops.backends.triton",
}
DEFAULT_GATHER_LIMIT_BYTES = 256 * 2**10
ENV_BACKEND = "BIFORMER_BACKEND"
_default: list[str] = [os.environ.get(ENV_BACKEND, "").strip() or AUTO]
_context: list[str] = []
_logged: set[tuple] = set()
_loaded: dict[str, ModuleType | None] = {}
_import_errors: dict[str, str] = {}


def _load_all() -> None:
    """Import every backend once, eagerly, so that dispatch under torch.compile is a lookup."""
    for name, module_name in _MODULES.items():
        try:
            _loaded[name] = importlib.import_module(module_name)
        except Exception as err:  # noqa: BLE001 - an optional backend may fail in many ways
            _loaded[name] = None
            _import_errors[name] = f"{type(err).__name__}: {err}"
            logger.debug("backend %s unavailable: %s", name, err)


class BackendUnavailable(RuntimeError):
    """A requested backend cannot run this call; the message lists why."""


def _check_name(name: str | None, what: str = "backend") -> str:
    name = AUTO if name is None else name
    if not isinstance(name, str) or (name != AUTO and name not in BACKENDS):
        raise ValueError(f"unknown {what} {name!r}; choose one of {', '.join((AUTO, *BACKENDS))}")
    return name


def get_backend(name: str) -> ModuleType | None:
    """The backend module, or None when it could not be imported (e.g. no Triton)."""
    if not _loaded:
        _load_all()
    return _loaded[_check_name(name)]


def backend_reasons(name: str, problem: Problem) -> list[str]:
    """Why backend ``name`` cannot run ``problem`` (empty list when it can)."""
    module = get_backend(name)
    if module is None:
        why = _import_errors.get(name, "missing dependency")
        return [f"the {name} backend could not be imported ({why})"]
    reasons = list(module.can_run(problem))
    if name != "reference" and exporting():
        reasons.append(
            "the model is being traced for export, which only the reference backend (plain "
            "PyTorch ops) supports"
        )
    return reasons


def available_backends(problem: Problem) -> list[str]:
    """The backends that can run ``problem``, fastest first."""
    return [name for name in BACKENDS if not backend_reasons(name, problem)]


def exporting() -> bool:
    """True while ``torch.jit.trace``, ONNX export or ``torch.export`` traces the model."""
    return bool(
        torch.jit.is_tracing() or torch.onnx.is_in_onnx_export() or torch.compiler.is_exporting()
    )


def set_default_backend(name: str) -> None:
    """Set the process default (level 3 of the rule): a backend name or ``"auto"``."""
    _default[0] = _check_name(name)


def get_default_backend() -> str:
    """The backend that calls without an explicit choice use now (``"auto"`` when none)."""
    if _context:
        return _context[-1]
    return _check_name(_default[0], f"{ENV_BACKEND} value")


@contextmanager
def use_backend(name: str) -> Iterator[None]:
    """Within this block, calls without an explicit backend use ``name`` (or ``"auto"``)."""
    _context.append(_check_name(name))
    try:
        yield
    finally:
        _context.pop()


def _gather_limit() -> int:
    return env_mib("BIFORMER_GATHER_LIMIT_MB", DEFAULT_GATHER_LIMIT_BYTES, allow_zero=True)


def _where(requested: str | None) -> str:
    if requested not in (None, AUTO):
        return "requested"
    if _context:
        return "set by use_backend()"
    return f"the default ({ENV_BACKEND} or set_default_backend())"


def choose_backend(problem: Problem, requested: str | None = None) -> str:
    """Resolve ``requested`` (a name, ``"auto"`` or None) to the backend that runs ``problem``."""
    name = _check_name(requested)
    if name == AUTO:
        name = get_default_backend()
    if name != AUTO:
        reasons = backend_reasons(name, problem)
        if reasons:
            raise BackendUnavailable(
                f"backend {name!r} ({_where(requested)}) cannot run this call: "
                + "; ".join(reasons) + ". Use backend='auto' to pick one that can."
            )
        return name
    return _automatic(problem)


def _automatic(problem: Problem) -> str:
    if exporting():
        return "reference"
    candidates = ["triton", "flex"] if problem.device_type == "cuda" else []
    for cand in candidates:
        reasons = backend_reasons(cand, problem)
        if not reasons:
            return cand
        key = (cand, problem.device_type, problem.dtype, problem.soft_routing, problem.q_tokens)
        if key not in _logged:
            _logged.add(key)
            logger.info("biformer: %s backend skipped: %s", cand, "; ".join(reasons))
    if problem.gathered_bytes() > _gather_limit():
        return "chunked"
    return "reference"
