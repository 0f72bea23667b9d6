"""One checkpoint path: the public API, the commands and the converters read files the same way.

Covers what two readers used to disagree on (EMA entries, wrapper prefixes), timm train.py
checkpoints on the command line, values of the wrong kind, and the timm / Hugging Face layout
written by ``biformer convert``.
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import pytest
import timm
import torch
from PIL import Image
from safetensors.torch import save_file

import biformer
from biformer.checkpoint import (
    TRAIN_STATE_FORMAT,
    CheckpointError,
    convert,
    load_checkpoint,
    model_from_checkpoint,
    read_checkpoint,
)
from biformer.models import strip_wrapper_prefixes

from .cli import cli
from .test_checkpoint import official_state_dict

TINY = dict(depths=(1, 1, 1, 1), dims=(16, 32, 64, 64), n_win=(4, 2, 2, 1),
            topks=(4, 2, 2, -2), head_dim=16, mlp_ratio=2.0)


def _model(num_classes: int = 10, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return timm.create_model("biformer_tiny", num_classes=num_classes, **TINY).eval()


def test_our_training_checkpoint_gives_its_ema_to_the_public_reader(tmp_path):
    trained, ema = _model(seed=1), _model(seed=2)
    path = tmp_path / "last.pth"
    torch.save({"format": TRAIN_STATE_FORMAT, "model": trained.state_dict(),
                "ema": ema.state_dict()}, path)
    target = _model(seed=3)
    assert load_checkpoint(target, path, use_ema=True).entry == "ema"
    for k, v in target.state_dict().items():
        assert torch.equal(v, ema.state_dict()[k]), k
    assert load_checkpoint(target, path).entry == "model"
    assert torch.equal(target.head.weight, trained.head.weight)


def test_wrapper_prefixes_are_stripped_wherever_they_appear(tmp_path):
    assert strip_wrapper_prefixes("module._orig_mod.module.x") == "x"
    model = _model()
    wrapped = {f"module._orig_mod.module.{k}": v for k, v in model.state_dict().items()}
    path = tmp_path / "ddp_compiled.pth"
    torch.save({"state_dict": wrapped}, path)
    state, entry = read_checkpoint(path)
    assert entry == "state_dict" and set(state) == set(model.state_dict())
    rebuilt = model_from_checkpoint(path, model="biformer_tiny", model_kwargs=TINY)[0].eval()
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(rebuilt(x), model(x), rtol=0, atol=0)


def test_integer_or_bool_weights_are_refused_not_cast(tmp_path):
    model = _model()
    bad = {k: (v.to(torch.int32) if k == "head.weight" else v)
           for k, v in model.state_dict().items()}
    path = tmp_path / "ints.safetensors"
    save_file(bad, str(path))
    with pytest.raises(CheckpointError, match="stores torch.int32 values where the model has "
                       "torch.float32 weights"):
        load_checkpoint(_model(seed=5), path)
    bad["head.weight"] = model.head.weight.detach() > 0
    save_file(bad, str(path))
    with pytest.raises(CheckpointError, match="values of another kind"):
        load_checkpoint(_model(seed=5), path)


def test_random_bytes_are_corrupt_not_python_objects(tmp_path):
    path = tmp_path / "noise.pth"
    path.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    with pytest.raises(CheckpointError, match="corrupt or truncated") as info:
        load_checkpoint(_model(), path)
    assert "Python objects" not in str(info.value)


def _timm_train_checkpoint(model: torch.nn.Module, path) -> None:
    """What timm's train.py saves: the args as a Namespace, the weights under state_dict."""
    torch.save({"epoch": 3, "arch": "biformer_tiny", "state_dict": model.state_dict(),
                "optimizer": {}, "version": 2, "metric": 12.5,
                "args": argparse.Namespace(model="biformer_tiny", lr=0.1)}, path)


def test_the_command_line_reads_a_timm_train_checkpoint(tmp_path, capsys):
    model = _model()
    ckpt = tmp_path / "model_best.pth.tar"
    _timm_train_checkpoint(model, ckpt)
    image = tmp_path / "digit.png"
    Image.fromarray(np.random.default_rng(1).integers(0, 255, (32, 32, 3), np.uint8)).save(image)
    kwargs = [f"{k}={','.join(map(str, v)) if isinstance(v, tuple) else v}"
              for k, v in TINY.items()]
    rc = cli(["predict", str(image), "--checkpoint", str(ckpt), "--model", "biformer_tiny",
              "--model-kwargs", *kwargs, "--json", "--topk", "3", "--device", "cpu"])
    out = capsys.readouterr()
    assert rc == 0, out.err
    top = json.loads(out.out.strip().splitlines()[-1])["top"]
    assert len(top) == 3 and all(0 <= t["index"] < 10 for t in top)


def _official_file(tmp_path):
    official = official_state_dict("biformer_tiny")
    path = tmp_path / "biformer_tiny_official.pth"
    torch.save({"model": official}, path)
    return path


def test_convert_writes_a_local_dir_timm_loads_offline(tmp_path, capsys):
    path = _official_file(tmp_path)
    reference = timm.create_model("biformer_tiny").eval()
    load_checkpoint(reference, path)
    out = tmp_path / "tiny_hub"
    assert cli(["convert", str(path), "--model", "biformer_tiny", "--out", str(out)]) == 0
    assert "local-dir:" in capsys.readouterr().out
    config = json.loads((out / "config.json").read_text())
    assert config["architecture"] == "biformer_tiny" and config["num_classes"] == 1000
    assert config["pretrained_cfg"]["input_size"] == [3, 224, 224]
    loaded = timm.create_model(f"local-dir:{out}", pretrained=True).eval()
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), reference(x), rtol=0, atol=0)


def test_convert_keeps_the_options_of_our_checkpoints(tmp_path):
    model = _model()
    ckpt = tmp_path / "best.pth"
    torch.save({"format": "biformer-weights-1", "model_name": "biformer_tiny",
                "model_kwargs": TINY, "num_classes": 10, "class_names": list("0123456789"),
                "data_config": {"input_size": [3, 32, 32], "mean": [0.5] * 3, "std": [0.5] * 3,
                                "interpolation": "bicubic", "crop_pct": 1.0},
                "model": model.state_dict()}, ckpt)
    out = convert(ckpt, tmp_path / "hub")
    config = json.loads((out / "config.json").read_text())
    assert config["label_names"] == list("0123456789")
    assert config["pretrained_cfg"]["input_size"] == [3, 32, 32]
    loaded = timm.create_model(f"local-dir:{out}", pretrained=True).eval()
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=0)


def test_detection_and_export_build_models_without_the_picture_package():
    import ast
    import pathlib

    root = pathlib.Path(biformer.__file__).parent
    for folder in ("detection", "checkpoint"):
        for file in (root / folder).glob("*.py"):
            tree = ast.parse(file.read_text())
            modules = [n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
            assert not any("viz" in m for m in modules), file
    for file in (root / "export.py", root / "export_command.py"):
        assert "viz" not in file.read_text(), file
