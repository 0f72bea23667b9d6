"""Checkpoints, in one place: reading safely, knowing what is inside, fitting, building, writing.

* ``files``: ``read_file`` (``weights_only`` / safetensors: a checkpoint never runs code),
  ``atomic_save``/``atomic_write`` (never a half-written file), ``remove_orphans``;
* ``entries``: which entry holds the weights (ours, timm's, official, EMA), prefix stripping,
  what our files record (``record_of``), training states vs weights (``is_train_state``);
* ``fit``: key/shape/kind diagnosis with the probable cause, ``load_state``;
* ``loading``: ``read_checkpoint``, ``load_checkpoint`` (the public API);
* ``building``: ``create_model`` by name, ``model_from_checkpoint`` (every command uses it);
* ``hub``: ``convert`` to the timm / Hugging Face folder layout (``config.json`` +
  ``model.safetensors``), loadable with ``timm.create_model("local-dir:DIR", pretrained=True)``.

The official key conversion itself is the model family's ``checkpoint_filter_fn`` (timm's
convention), which ``load_checkpoint`` applies through ``model.checkpoint_filter``.
"""

from ..errors import CheckpointError, MissingFileError
from .building import check_model_name, create_model, model_from_checkpoint, parse_model_kwargs
from .entries import (
    TRAIN_STATE_FORMAT,
    WEIGHTS_FORMAT,
    is_train_state,
    record_of,
    select_weights,
)
from .files import atomic_save, atomic_write, read_file, remove_orphans
from .fit import LoadResult, load_state
from .hub import convert, save_hub_folder
from .loading import convert_layout, load_checkpoint, read_checkpoint

__all__ = [
    "TRAIN_STATE_FORMAT",
    "WEIGHTS_FORMAT",
    "CheckpointError",
    "LoadResult",
    "MissingFileError",
    "atomic_save",
    "atomic_write",
    "check_model_name",
    "convert",
    "convert_layout",
    "create_model",
    "is_train_state",
    "load_checkpoint",
    "load_state",
    "model_from_checkpoint",
    "parse_model_kwargs",
    "read_checkpoint",
    "read_file",
    "record_of",
    "remove_orphans",
    "save_hub_folder",
    "select_weights",
]
