"""Backend selection for the routed-attention operator.

Order of precedence: an explicit ``backend=`` argument other than ``"auto"``, then the innermost
``use_backend(...)`` context, then the ``BIFORMER_BACKEND`` environment variable, then the automatic
choice: ``triton`` on CUDA when it can run, else ``flex``, else ``chunked`` when the gather-based
reference would need more than ``BIFORMER_GATHER_LIMIT_MB`` (default 0.25 MiB), else ``reference``.
The low default is measured: on CPU the chunked backend is faster than the reference from the
smallest BiFormer stage shape upwards (fwd+bwd 1.4-4.5x at batch 1 and 8, docs/benchmarks.md); only
toy problems, where both take well under a millisecond, still go to the reference.
Every backend explains why it refuses a call (``can_run(...)``); forcing a backend that cannot run
raises an error that lists the reasons.
"""

from __future__ import annotations

import importlib
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from types import ModuleType

from .checks import Problem

__all__ = [
    "BACKENDS",
    "BackendUnavailable",
    "available_backends",
    "backend_reasons",
    "choose_backend",
    "get_backend",
    "use_backend",
]

logger = logging.getLogger("biformer.ops")

BACKENDS = ("triton", "flex", "chunked", "reference")
_MODULES = {
    "reference": "biformer.ops.backends.reference",
    "chunked": "biformer.ops.backends.chunked",
    "flex": "biformer.ops.backends.flex",
    "triton": "biformer.ops.backends.triton",
}
DEFAULT_GATHER_LIMIT_BYTES = 256 * 2**10
_override: list[str] = []
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


def _check_name(name: str) -> str:
    if name != "auto" and name not in BACKENDS:
        raise ValueError(f"unknown backend {name!r}; choose one of {('auto',) + BACKENDS}")
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
    return list(module.can_run(problem))


def available_backends(problem: Problem) -> list[str]:
    """The backends that can run ``problem``, fastest first."""
    return [name for name in BACKENDS if not backend_reasons(name, problem)]


@contextmanager
def use_backend(name: str) -> Iterator[None]:
    """Within this context, ``backend="auto"`` calls use ``name`` (or ``"auto"`` again)."""
    _override.append(_check_name(name))
    try:
        yield
    finally:
        _override.pop()


def _gather_limit() -> int:
    env = os.environ.get("BIFORMER_GATHER_LIMIT_MB")
    if not env:
        return DEFAULT_GATHER_LIMIT_BYTES
    try:
        return int(float(env) * 2**20)
    except ValueError as err:
        raise ValueError(
            f"BIFORMER_GATHER_LIMIT_MB must be a number of MiB, got {env!r}"
        ) from err


def choose_backend(problem: Problem, requested: str = "auto") -> str:
    """Resolve ``requested`` (a name or ``"auto"``) to the backend that will run ``problem``."""
    name = _check_name(requested)
    if name == "auto" and _override:
        name = _override[-1]
    if name == "auto":
        name = _check_name(os.environ.get("BIFORMER_BACKEND", "auto") or "auto")
    if name != "auto":
        reasons = backend_reasons(name, problem)
        if reasons:
            raise BackendUnavailable(
                f"backend {name!r} cannot run this call: " + "; ".join(reasons)
                + ". Use backend='auto' to pick one that can."
            )
        return name
    candidates = ["triton", "flex"] if problem.device_type == "cuda" else []
    for cand in candidates:
        reasons = backend_reasons(cand, problem)
        if not reasons:
            return cand
        key = (cand, problem.device_type, problem.dtype, problem.soft_routing, problem.q_region)
        if key not in _logged:
            _logged.add(key)
            logger.info("biformer: %s backend skipped: %s", cand, "; ".join(reasons))
    if problem.gathered_bytes() > _gather_limit():
        return "chunked"
    return "reference"
