"""``load_checkpoint``: weights from a file into a model, safely and strictly."""

from __future__ import annotations

import os
from typing import Any

from torch import Tensor, nn

from .entries import select_weights
from .files import read_file
from .fit import LoadResult, load_state

__all__ = ["convert_layout", "load_checkpoint", "read_checkpoint"]


def read_checkpoint(
    path: str | os.PathLike, *, use_ema: bool = False, map_location: Any = "cpu"
) -> tuple[dict[str, Tensor], str]:
    """The state_dict stored in ``path`` and the entry it came from (see ``entries``).

    Raises ``FileNotFoundError`` or ``CheckpointError`` naming the path.
    """
    return select_weights(read_file(path, map_location=map_location), use_ema=use_ema,
                          path=path)


def convert_layout(model: nn.Module, state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
    """``state_dict`` in ``model``'s layout: BiFormer models convert the official one."""
    convert = getattr(model, "checkpoint_filter", None)
    return convert(state_dict) if callable(convert) else state_dict


def load_checkpoint(
    model: nn.Module,
    path: str | os.PathLike,
    *,
    strict: bool = True,
    use_ema: bool = False,
    new_head: bool = False,
    map_location: Any = "cpu",
) -> LoadResult:
    """Load the weights in ``path`` into ``model`` (in place) and report what was loaded.

    Accepts official BiFormer checkpoints (``{"model": state_dict}`` in the original layout),
    this package's own (training states and best weights), timm train.py checkpoints,
    DDP/``torch.compile``-prefixed ones and ``.safetensors`` files; nothing in them is executed.

    Args:
        model: the model to fill; its ``checkpoint_filter`` (BiFormer models) converts the
            official layout.
        path: ``.pth``/``.pt``/``.bin``/``.pth.tar`` (read with ``weights_only=True``) or
            ``.safetensors``.
        strict: every key must match in name, shape and kind (otherwise ``CheckpointError``
            lists the differences and their probable cause). ``strict=False`` loads what fits
            and warns about the rest, which keeps its current values.
        use_ema: load the EMA weights (``ema``, ``model_ema`` or ``state_dict_ema``); an error
            if the file has none.
        new_head: only the classifier may differ (another number of classes, or none): the
            model keeps its own classifier (fine-tuning, detection backbones).
        map_location: where the tensors are read to.

    Returns:
        ``LoadResult`` with the missing, unexpected and mismatched keys and the entry used.
    """
    state_dict, entry = read_checkpoint(path, use_ema=use_ema, map_location=map_location)
    return load_state(model, convert_layout(model, state_dict), path=path, strict=strict,
                      new_head=new_head, entry=entry)
