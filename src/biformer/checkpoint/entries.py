"""What is inside a checkpoint: which entry holds the weights, and what our own files record.

Layouts understood (the weights entry, then the EMA entry):

- ours (``biformer train``): ``model`` (the trained weights) and ``ema``; ``format`` names the
  kind of file (``TRAIN_STATE_FORMAT`` for ``last.pth``, ``WEIGHTS_FORMAT`` for ``best.pth``) and
  ``model_name``/``model_kwargs``/``num_classes``/``class_names``/``data_config``/``dataset``
  describe the model;
- timm's train.py: ``state_dict`` and ``state_dict_ema``; other trainers: ``model_ema``;
- the official BiFormer files: ``{"model": state_dict}``;
- a bare state_dict (also every ``.safetensors`` file).

Parameter names lose the wrapper prefixes of DDP (``module.``), ``torch.compile``
(``_orig_mod.``) and activation checkpointing, wherever they appear
(``biformer.models.strip_wrapper_prefixes``).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from torch import Tensor

from ..errors import CheckpointError
from ..models import strip_wrapper_prefixes

__all__ = [
    "EMA_ENTRIES",
    "RECORD_KEYS",
    "TRAIN_STATE_FORMAT",
    "WEIGHTS_FORMAT",
    "WEIGHT_ENTRIES",
    "is_train_state",
    "record_of",
    "select_weights",
]

TRAIN_STATE_FORMAT = "biformer-train-1"  # last.pth: everything a resumed run needs
WEIGHTS_FORMAT = "biformer-weights-1"  # best.pth: weights and their description only
WEIGHT_ENTRIES = ("model", "state_dict")
EMA_ENTRIES = ("ema", "model_ema", "state_dict_ema")
RECORD_KEYS = ("model_name", "model_kwargs", "num_classes", "class_names", "data_config",
               "dataset")
_OURS = (TRAIN_STATE_FORMAT, WEIGHTS_FORMAT)


def is_train_state(checkpoint: Any) -> bool:
    """True for a resumable training state of ours (``last.pth``), not for weights only."""
    return (isinstance(checkpoint, Mapping) and checkpoint.get("format") == TRAIN_STATE_FORMAT
            and "position" in checkpoint and "optimizer" in checkpoint)


def record_of(checkpoint: Any) -> dict[str, Any]:
    """What one of our checkpoints says about its model; empty for other files."""
    if not isinstance(checkpoint, Mapping) or checkpoint.get("format") not in _OURS:
        return {}
    return {k: checkpoint.get(k) for k in RECORD_KEYS}


def _entry(checkpoint: Mapping[str, Any], use_ema: bool, path: str | os.PathLike) -> str:
    """The entry holding the weights ("" for a bare state_dict)."""
    wanted = EMA_ENTRIES if use_ema else WEIGHT_ENTRIES
    found = next((k for k in wanted if isinstance(checkpoint.get(k), Mapping)), None)
    if found is not None:
        return found
    if use_ema:
        raise CheckpointError(
            f"{path} has no EMA weights (none of {', '.join(EMA_ENTRIES)}; its entries: "
            f"{sorted(map(str, checkpoint))[:10]}); load it without use_ema / --ema"
        )
    return ""


def select_weights(
    checkpoint: Any, *, use_ema: bool = False, path: str | os.PathLike = "checkpoint"
) -> tuple[dict[str, Tensor], str]:
    """The state_dict inside a loaded checkpoint and the entry it came from.

    Raises ``CheckpointError`` when there is none (not a mapping, values that are not tensors,
    no EMA entry with ``use_ema``).
    """
    if not isinstance(checkpoint, Mapping):
        raise CheckpointError(
            f"{path} holds a {type(checkpoint).__name__}, not a state_dict (a mapping of "
            "parameter names to tensors)"
        )
    entry = _entry(checkpoint, use_ema, path)
    state_dict = checkpoint[entry] if entry else checkpoint
    out: dict[str, Tensor] = {}
    for key, value in state_dict.items():
        if not isinstance(value, Tensor):
            raise CheckpointError(
                f"{path}: entry {entry or '<top level>'!r} is not a state_dict: {key!r} holds a "
                f"{type(value).__name__}, not a tensor"
            )
        out[strip_wrapper_prefixes(str(key))] = value
    if not out:
        raise CheckpointError(f"{path}: entry {entry or '<top level>'!r} holds no weights")
    return out, entry
