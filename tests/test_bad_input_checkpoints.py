"""Bad checkpoint files: each row builds a file and names the phrase the one clear error carries,
through the Python API (``load_checkpoint`` / ``model_from_checkpoint``) and the command line."""

from __future__ import annotations

import argparse
import os

import pytest
import timm
import torch
from safetensors.torch import save_file

from biformer.checkpoint import (
    TRAIN_STATE_FORMAT,
    CheckpointError,
    load_checkpoint,
    model_from_checkpoint,
)
from biformer.errors import MissingFileError

from .cli import assert_one_line_error, run

SMALL = dict(depths=(1, 1, 1, 1), dims=(16, 32, 64, 64), head_dim=16, num_classes=10)


class _Evil:
    def __reduce__(self):
        return (print, ("this must never run",))


def _model(**changes) -> torch.nn.Module:
    torch.manual_seed(0)
    return timm.create_model("biformer_tiny", **{**SMALL, **changes})


def _weights() -> dict[str, torch.Tensor]:
    return _model().state_dict()


def _write(path, kind: str) -> None:
    """The bad file of row ``kind``."""
    w = _weights()
    makers = {
        "random": lambda: path.write_bytes(os.urandom(3000)),
        "empty": lambda: path.write_bytes(b""),
        "truncated": lambda: (torch.save({"model": w}, path),
                              path.write_bytes(path.read_bytes()[:5000])),
        "evil": lambda: torch.save({"model": w, "hook": _Evil()}, path),
        "list": lambda: torch.save([1, 2, 3], path),
        "not_tensors": lambda: torch.save({"model": {"step": 3}}, path),
        "no_weights": lambda: torch.save({}, path),
        "no_ema": lambda: torch.save({"model": w}, path),
        "ints": lambda: save_file({k: v.to(torch.int64) if v.is_floating_point() else v
                                   for k, v in w.items()}, str(path)),
        "bad_safetensors": lambda: path.write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{bad}"),
        "resnet": lambda: torch.save(timm.create_model("resnet10t").state_dict(), path),
        "deeper": lambda: torch.save({"model": _model(depths=(1, 1, 2, 1)).state_dict()}, path),
        "classes": lambda: torch.save({"model": _model(num_classes=1000).state_dict()}, path),
        "namespace_only": lambda: torch.save({"args": argparse.Namespace(a=1)}, path),
    }
    makers[kind]()


ROWS = [  # (file kind, suffix, load options, phrase)
    ("random", ".pth", {}, "corrupt or truncated"),
    ("empty", ".pth", {}, "corrupt or truncated"),
    ("truncated", ".pth", {}, "corrupt or truncated"),
    ("evil", ".pth", {}, "stores Python objects"),
    ("list", ".pth", {}, "holds a list, not a state_dict"),
    ("not_tensors", ".pth", {}, "'step' holds a int, not a tensor"),
    ("no_weights", ".pth", {}, "holds no weights"),
    ("namespace_only", ".pth.tar", {}, "'args' holds a Namespace, not a tensor"),
    ("no_ema", ".pth", {"use_ema": True}, "has no EMA weights"),
    ("ints", ".safetensors", {}, "values of another kind"),
    ("bad_safetensors", ".safetensors", {}, "not a valid .safetensors file"),
    ("resnet", ".pth", {}, "does not look like a BiFormer checkpoint"),
    ("deeper", ".pth", {}, "depths (1, 1, 2, 1)"),
    ("classes", ".pth", {}, "classifier has 1000 classes"),
]


@pytest.mark.parametrize("kind,suffix,options,phrase", ROWS, ids=[r[0] for r in ROWS])
def test_bad_checkpoint_files_raise_one_clear_error(kind, suffix, options, phrase, tmp_path,
                                                    capsys):
    path = tmp_path / f"{kind}{suffix}"
    _write(path, kind)
    with pytest.raises(CheckpointError, match=None) as info:
        load_checkpoint(_model(), path, **options)
    assert phrase in str(info.value) and str(path) in str(info.value)
    assert "this must never run" not in capsys.readouterr().out
    with pytest.raises(CheckpointError) as info:
        model_from_checkpoint(path, model="biformer_tiny", model_kwargs=SMALL, **options)
    assert phrase in str(info.value)
    flags = ["--ema"] if options.get("use_ema") else []
    rc, _, err = run(capsys, "eval", "--checkpoint", str(path), "--model", "biformer_tiny",
                     "--model-kwargs", "depths=1,1,1,1", "dims=16,32,64,64", "head_dim=16",
                     "--num-classes", "10", *flags)
    assert_one_line_error(rc, err, str(path))


def test_missing_file_and_folder(tmp_path):
    with pytest.raises(MissingFileError, match="checkpoint file not found"):
        load_checkpoint(_model(), tmp_path / "none.pth")
    with pytest.raises(FileNotFoundError):  # still a FileNotFoundError for callers
        load_checkpoint(_model(), tmp_path / "none.pth")
    with pytest.raises(CheckpointError, match="is a directory"):
        load_checkpoint(_model(), tmp_path)


def test_model_names_that_contradict_the_file(tmp_path):
    path = tmp_path / "ours.pth"
    torch.save({"format": TRAIN_STATE_FORMAT, "model_name": "biformer_tiny",
                "model_kwargs": SMALL, "num_classes": 10, "model": _weights(),
                "position": {}, "optimizer": {}}, path)
    with pytest.raises(CheckpointError, match="holds a biformer_tiny, not a biformer_small"):
        model_from_checkpoint(path, model="biformer_small")
    official = tmp_path / "official.pth"
    torch.save({"model": _weights()}, official)
    with pytest.raises(CheckpointError, match="does not say which model it holds"):
        model_from_checkpoint(official)
