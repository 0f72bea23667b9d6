"""Training checkpoints: atomic writes, the resumable training state, RNG state, weight reading.

Two files in the output directory (see docs/training.md):

- ``last.pth``: the full training state after the last completed step (written at the end of
  every epoch and when the run is interrupted): ``model`` (the trained weights), ``ema`` (the EMA
  weights, with ``--model-ema``), ``optimizer``, ``scheduler``, ``scaler``, ``epoch`` and
  ``step`` (position reached), ``num_updates``, ``rng`` (one entry per rank), ``history``
  (per-epoch metrics), ``best``, ``args``, ``model_name``, ``model_kwargs``, ``num_classes``,
  ``class_names``, ``data_config``.
- ``best.pth``: the weights with the best validation top-1 under ``model``, with the same
  descriptive entries and ``metrics``; no optimizer state.

Everything is stored as tensors, numbers, strings, lists, tuples and dicts, so both load with
``torch.load(..., weights_only=True)``. The EMA weights live under ``ema``, a key timm's
loader ignores (it would prefer ``model_ema`` over ``model``), so ``timm.create_model(...,
pretrained_cfg_overlay=dict(file=...))`` always gets ``model``.
"""

from __future__ import annotations

import os
import pickle
import random
from typing import Any

import numpy as np
import torch

from ..errors import CommandError

__all__ = [
    "CHECKPOINT_FORMAT",
    "atomic_save",
    "capture_rng",
    "load_checkpoint_file",
    "read_weights",
    "restore_rng",
]

CHECKPOINT_FORMAT = "biformer-train-1"


def atomic_save(obj: Any, path: str) -> None:
    """``torch.save`` to a temporary file in the same directory, then rename over ``path``.

    A reader (or a crash) never sees a half-written file: ``path`` holds either the previous
    checkpoint or the new one.
    """
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    tmp = os.path.join(directory, f".{os.path.basename(path)}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    try:  # make the rename itself durable
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def capture_rng() -> dict[str, Any]:
    """This process's Python, NumPy, torch (and CUDA) generator states, as plain data."""
    version, py_state, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "python": {"version": version, "state": list(py_state), "gauss": gauss},
        "numpy": {
            "kind": str(kind),
            "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
        "torch": torch.random.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    """Inverse of :func:`capture_rng`."""
    py = state["python"]
    random.setstate((int(py["version"]), tuple(int(v) for v in py["state"]), py["gauss"]))
    npst = state["numpy"]
    np.random.set_state(
        (
            npst["kind"],
            npst["keys"].numpy().astype(np.uint32),
            int(npst["pos"]),
            int(npst["has_gauss"]),
            float(npst["cached_gaussian"]),
        )
    )
    torch.random.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def load_checkpoint_file(path: str, *, flag: str = "--checkpoint") -> Any:
    """``torch.load(path, weights_only=True)`` on the CPU, with one-line errors."""
    if not os.path.exists(path):
        raise CommandError(f"{flag} {path}: no such file")
    if os.path.isdir(path):
        raise CommandError(f"{flag} {path} is a directory, not a checkpoint file")
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file

        try:
            return load_file(path, device="cpu")
        except Exception as err:
            raise CommandError(
                f"{flag} {path} is not a readable safetensors file ({err})"
            ) from None
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        if "weights only" in str(err).lower():
            raise CommandError(
                f"{flag} {path} stores Python objects, not only tensors and plain containers; "
                "it is not read (re-save its weights with torch.save(model.state_dict(), ...))"
            ) from None
        raise CommandError(f"{flag} {path} is not a PyTorch checkpoint, or is corrupt") from None
    except Exception:  # zip/pickle/EOF errors of damaged files come in many types
        raise CommandError(
            f"{flag} {path} is not a PyTorch checkpoint, or is corrupt or truncated"
        ) from None


def read_weights(checkpoint: Any, *, use_ema: bool, flag: str = "--checkpoint") -> dict[str, Any]:
    """The state dict inside a loaded checkpoint (ours, official, timm or a bare state dict).

    With ``use_ema`` the EMA weights (``ema``, ``model_ema``, ``state_dict_ema``) are taken and
    their absence is an error; otherwise ``model``, ``state_dict`` or the dict itself.
    Prefixes of DDP (``module.``) and ``torch.compile`` (``_orig_mod.``) are removed.
    """
    if not isinstance(checkpoint, dict):
        raise CommandError(f"{flag}: expected a dict of weights, found {type(checkpoint).__name__}")
    if use_ema:
        keys = ("ema", "model_ema", "state_dict_ema")
        found = next((k for k in keys if isinstance(checkpoint.get(k), dict)), None)
        if found is None:
            raise CommandError(f"{flag} has no EMA weights (none of {', '.join(keys)}); drop --ema")
        state = checkpoint[found]
    else:
        keys = ("model", "state_dict")
        found = next((k for k in keys if isinstance(checkpoint.get(k), dict)), None)
        state = checkpoint[found] if found else checkpoint
    if not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CommandError(f"{flag}: no weights found (expected a dict of tensors)")
    out = {}
    for k, v in state.items():
        for prefix in ("_orig_mod.", "module.", "_orig_mod."):
            if k.startswith(prefix):
                k = k[len(prefix) :]
        out[k] = v
    return out
