"""Checked inputs of the dense-prediction, picture and export commands.

Model names, checkpoints, image files and output paths are validated here, so that each mistake
gives one clear message (``ValueError`` / ``FileNotFoundError`` from the Python API, turned into a
one-line ``CommandError`` by the commands).
"""

from __future__ import annotations

import difflib
import os
from pathlib import Path
from typing import Any

import numpy as np
import timm
from torch import nn

from ..errors import CommandError

__all__ = [
    "check_model_name",
    "check_output_path",
    "create_model",
    "as_command_error",
    "read_image",
]


def check_model_name(name: str) -> str:
    """``name`` if it is a BiFormer model known to timm (registered by ``import biformer``).

    Raises ValueError naming the close names (``timm.list_models("*biformer*")``).
    """
    from .. import models  # noqa: F401  (registers the family with timm)

    if not isinstance(name, str) or not name:
        raise ValueError(f"model name must be a non-empty string, got {name!r}")
    base = name.split(".", 1)[0]  # "biformer_tiny.in1k" -> "biformer_tiny"
    ours = timm.list_models("*biformer*")
    if base in ours:
        return name
    close = difflib.get_close_matches(base, ours, n=3, cutoff=0.5)
    hint = f"did you mean {', '.join(close)}?" if close else f"BiFormer models: {', '.join(ours)}"
    what = "not a BiFormer model" if timm.is_model(base) else "unknown model"
    raise ValueError(f"{what} {name!r}; {hint}")


def create_model(
    name: str | None, *, checkpoint: str | os.PathLike | None = None, **kwargs: Any
) -> nn.Module:
    """``timm.create_model(name, **kwargs)`` with our or official weights from ``checkpoint``.

    Our training checkpoints name their model and its options (``model_name``,
    ``model_kwargs``, ``num_classes``): they are used unless ``name``/``kwargs`` say otherwise.
    For other checkpoints the classifier width follows ``head.weight``. Without a checkpoint the
    weights are random and ``name`` defaults to ``biformer_tiny``.
    """
    from ..checkpoint import load_checkpoint, read_checkpoint

    if checkpoint is None:
        return timm.create_model(check_model_name(name or "biformer_tiny"), **kwargs)
    path = Path(checkpoint)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint file not found: {path}")
    from ..engine.modeling import checkpoint_record

    record = checkpoint_record(str(path))
    name = check_model_name(name or record.get("model_name") or "biformer_tiny")
    options = {**(record.get("model_kwargs") or {}), **kwargs}
    if "num_classes" not in options:
        if record.get("num_classes"):
            options["num_classes"] = int(record["num_classes"])
        else:
            state_dict, _ = read_checkpoint(path)
            head = state_dict.get("head.weight")
            if head is not None and head.ndim == 2:
                options["num_classes"] = int(head.shape[0])
    model = timm.create_model(name, **options)
    load_checkpoint(model, path)
    return model


def read_image(path: str | os.PathLike) -> np.ndarray:
    """The RGB pixels of an image file, ``[H, W, 3]`` uint8; clear errors for bad files."""
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"image file not found: {path}")
    if path.is_dir():
        raise ValueError(f"{path} is a directory, not an image file")
    try:
        with Image.open(path) as img:
            return np.asarray(img.convert("RGB"))
    except (UnidentifiedImageError, OSError, ValueError) as err:
        raise ValueError(
            f"{path} is not an image PIL can read ({type(err).__name__}); pass a PNG/JPEG file"
        ) from None


def check_output_path(path: str | os.PathLike, *, suffixes: tuple[str, ...] = ()) -> Path:
    """``path`` as a Path, after checking its folder exists (or can be made) and is writable."""
    path = Path(path)
    if suffixes and path.suffix.lower() not in suffixes:
        raise ValueError(
            f"output {path} must end with {' or '.join(suffixes)} (got {path.suffix or 'none'})"
        )
    if path.is_dir():
        raise ValueError(f"output {path} is a directory; give a file name inside it")
    parent = path.parent if str(path.parent) else Path(".")
    for folder in (parent, *parent.parents):
        if folder.exists():
            if not folder.is_dir():
                raise ValueError(f"cannot write {path}: {folder} is a file, not a folder")
            break
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ValueError(f"cannot create the folder of output {path}: {err.strerror}") from None
    if not os.access(parent, os.W_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise ValueError(f"output {path} cannot be written (permission denied)")
    return path


def as_command_error(err: Exception) -> CommandError:
    """One-line ``CommandError`` for an input error raised by the helpers above."""
    lines = [line.strip() for line in str(err).strip().splitlines() if line.strip()]
    if not lines and isinstance(err, FileNotFoundError) and err.filename:
        lines = [f"file not found: {err.filename}"]
    return CommandError(" ".join(lines) or type(err).__name__)
