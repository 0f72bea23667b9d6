"""``register()``: make ultralytics build, save and load YOLO models with our YAML names.

It touches exactly two things, both additive and idempotent:

1. ``ultralytics.nn.tasks.parse_model`` (the function every ultralytics model class calls to
   build a model from its YAML dict) is wrapped: model dicts without our names go to the
   original unchanged; the others are built by ``parsing.build_with_bra``, which still lets the
   original resolve every row. ``unregister()`` puts the original back.
2. ``torch.serialization.add_safe_globals`` receives the classes our layers are made of
   (``BRA``, ``BRA2d``, ...), so ultralytics' restricted checkpoint loading
   (``ULTRALYTICS_SAFE_LOAD=1``, ``weights_only=True``) accepts checkpoints with BRA layers
   without being turned off. These entries stay for the process (torch keeps one list).
"""

from __future__ import annotations

import functools
import re
import threading

import torch

from .modules import BRA, BRAOptions
from .parsing import build_with_bra

__all__ = ["MIN_VERSION", "is_registered", "register", "register_quietly", "unregister"]

MIN_VERSION = (8, 3)
INSTALL_HINT = "pip install 'biformer[yolo]'"
_lock = threading.Lock()


def _tasks():
    """``ultralytics.nn.tasks``; ImportError with the install command when missing or too old."""
    try:
        import ultralytics
        from ultralytics.nn import tasks
    except ImportError as err:
        raise ImportError(
            f"biformer's YOLO integration needs ultralytics >= 8.3, which is not installed "
            f"({err}); install it with: {INSTALL_HINT}"
        ) from err
    found = tuple(int(p) for p in re.findall(r"\d+", ultralytics.__version__)[:2])
    if found < MIN_VERSION:
        raise ImportError(
            f"biformer's YOLO integration needs ultralytics >= 8.3, found "
            f"{ultralytics.__version__}; upgrade with: {INSTALL_HINT}"
        )
    return tasks


def _safe_classes() -> list[type]:
    """The biformer classes a model with BRA layers pickles (found from one small layer)."""
    layer = BRA(32, BRAOptions(n_win=2, topk=1))
    return sorted({type(m) for m in layer.modules() if type(m).__module__.startswith("biformer.")},
                  key=lambda t: f"{t.__module__}.{t.__qualname__}")


def _wrap(original):
    @functools.wraps(original)
    def parse_model(d, ch, verbose=True):
        return build_with_bra(original, d, ch, verbose)

    parse_model.__biformer_original__ = original
    return parse_model


def is_registered() -> bool:
    """Whether ``register()`` has wrapped ultralytics' ``parse_model`` in this process."""
    try:
        tasks = _tasks()
    except ImportError:
        return False
    return hasattr(tasks.parse_model, "__biformer_original__")


def register() -> None:
    """Make ``BRA``, ``C2f_BRA`` and ``C3k2_BRA`` usable in ultralytics model YAMLs.

    Idempotent (a second call changes nothing). Raises ImportError naming
    ``pip install 'biformer[yolo]'`` when ultralytics (>= 8.3) is not installed.
    """
    tasks = _tasks()
    with _lock:
        if not hasattr(tasks.parse_model, "__biformer_original__"):
            tasks.parse_model = _wrap(tasks.parse_model)
            torch.serialization.add_safe_globals(_safe_classes())


def register_quietly() -> None:
    """``register()`` when ultralytics is installed; nothing otherwise (used when unpickling)."""
    try:
        register()
    except ImportError:
        pass


def unregister() -> None:
    """Put ultralytics' own ``parse_model`` back (the safe-globals entries stay)."""
    tasks = _tasks()
    with _lock:
        original = getattr(tasks.parse_model, "__biformer_original__", None)
        if original is not None:
            tasks.parse_model = original
