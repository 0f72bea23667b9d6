"""The timm / Hugging Face folder layout: ``config.json`` + ``model.safetensors``.

``convert(path, out_dir)`` turns any checkpoint ``model_from_checkpoint`` reads (the official
``.pth`` files included) into the layout that timm loads offline with
``timm.create_model("local-dir:DIR", pretrained=True)`` and that ``timm.models.push_to_hf_hub``
uploads. The config is timm's own (``timm.models.save_for_hf``): the architecture, the number of
classes, the constructor options the model was built with and the pretrained cfg (input size,
mean/std, crop, interpolation).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from torch import nn

from ..errors import InputError
from .building import model_from_checkpoint

__all__ = ["convert", "save_hub_folder"]

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
_DATA_FIELDS = ("input_size", "interpolation", "mean", "std", "crop_pct", "crop_mode")


def save_hub_folder(model: nn.Module, out_dir: str | os.PathLike, *,
                    class_names: list[str] | None = None,
                    data_config: dict[str, Any] | None = None) -> Path:
    """Write ``model`` to ``out_dir`` as ``config.json`` + ``model.safetensors``; returns it.

    ``data_config`` (``input_size``, ``mean``, ... as our checkpoints record it) replaces the
    model's default preprocessing in the config."""
    from timm.models import save_for_hf

    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise InputError(f"output {out} is a file; give a folder for config.json and "
                         f"{WEIGHTS_NAME}")
    if data_config:  # the preprocessing fields timm records (our checkpoints store lists)
        data_config = {k: tuple(v) if isinstance(v, list) else v for k, v in data_config.items()
                       if k in _DATA_FIELDS}
    model_config: dict[str, Any] = {}
    if class_names and len(class_names) == getattr(model, "num_classes", None):
        model_config["label_names"] = list(class_names)
    try:
        save_for_hf(model, str(out), model_config=model_config, safe_serialization=True,
                    data_config=data_config)
    except OSError as err:
        raise InputError(f"cannot write {out}: {err.strerror or err}") from None
    return out


def convert(
    path: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    model: str | None = None,
    model_kwargs: dict[str, Any] | None = None,
    use_ema: bool = False,
) -> Path:
    """Convert the checkpoint ``path`` to the timm/HF layout in ``out_dir``; returns ``out_dir``.

    ``model`` names the model for files that do not record it (the official ones: e.g.
    ``biformer_small``); our own checkpoints record their model, options and class names.
    """
    net, record = model_from_checkpoint(path, model=model, model_kwargs=model_kwargs,
                                        use_ema=use_ema, biformer_only=False)
    return save_hub_folder(net, out_dir, class_names=record.get("class_names"),
                           data_config=record.get("data_config"))
