"""biformer eval on an ImageFolder made here, and biformer predict on image files."""

from __future__ import annotations

import json

import numpy as np
import pytest
import timm
import torch
from PIL import Image
from sklearn.datasets import load_digits

import biformer  # noqa: F401  (registers the models)
from biformer.engine.predict import class_names_for

from .cli import cli

TINY_KWARGS = ["dims=16,32,64,64", "depths=1,1,1,1"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny demo model trained for a few steps (well above chance on digits)."""
    out = tmp_path_factory.mktemp("run")
    rc = cli(["train", "--out", str(out), "--model-kwargs", *TINY_KWARGS, "--epochs", "2",
                   "--batch-size", "32", "--limit-train-batches", "12", "--no-tensorboard"])
    assert rc == 0
    return out / "best.pth"


def _digit_png(path, index: int) -> int:
    digits = load_digits()
    img = np.round(digits.images[index] * (255 / 16)).astype(np.uint8)
    Image.fromarray(img).save(path)
    return int(digits.target[index])


def _make_folder(root, classes, per_class: int, start: int = 1000):
    """ImageFolder of real digits (indices from ``start``, outside most training batches)."""
    digits = load_digits()
    labels = []
    for c in classes:
        (root / str(c)).mkdir(parents=True, exist_ok=True)
        idx = [i for i in range(start, len(digits.target)) if digits.target[i] == c][:per_class]
        for i in idx:
            _digit_png(root / str(c) / f"{i}.png", i)
            labels.append(c)
    return labels


def _model_from(ckpt_path):
    """The checkpoint's network, rebuilt independently of the eval command (through timm)."""
    ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=True)
    model = timm.create_model(
        "biformer_tiny", pretrained=True, num_classes=ckpt["num_classes"],
        pretrained_cfg_overlay=dict(file=str(ckpt_path), num_classes=ckpt["num_classes"]),
        **ckpt["model_kwargs"],
    ).eval()
    return model, ckpt


def _logits(model, ckpt, paths) -> torch.Tensor:
    size = ckpt["data_config"]["input_size"][-1]
    mean = torch.tensor(ckpt["data_config"]["mean"]).view(3, 1, 1)
    std = torch.tensor(ckpt["data_config"]["std"]).view(3, 1, 1)
    batch = []
    for p in paths:
        img = Image.open(p).convert("RGB").resize((size, size), Image.BICUBIC)  # crop_pct 1.0
        x = torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0).permute(2, 0, 1)
        batch.append((x - mean) / std)
    with torch.no_grad():
        return model(torch.stack(batch))


def test_eval_on_image_folder_matches_independent_computation(trained, tmp_path, capsys):
    # three of the ten classes only: folder "5" must still mean class 5 (names in checkpoint)
    data = tmp_path / "data"
    _make_folder(data / "val", (2, 5, 7), per_class=8)
    rc = cli(["eval", "--checkpoint", str(trained), "--data", str(data), "--json",
                   "--workers", "0", "--batch-size", "10"])
    assert rc == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["count"] == 24

    model, ckpt = _model_from(trained)
    paths = sorted((data / "val").glob("*/*.png"))
    targets = torch.tensor([int(p.parent.name) for p in paths])
    logits = _logits(model, ckpt, paths)
    n = len(paths)
    top1 = 100.0 * (logits.argmax(-1) == targets).sum().item() / n
    top5 = 100.0 * (logits.topk(5, -1).indices == targets[:, None]).any(-1).sum().item() / n
    loss = torch.nn.functional.cross_entropy(logits, targets).item()
    assert result["top1"] == pytest.approx(top1, abs=1e-6)
    assert result["top5"] == pytest.approx(top5, abs=1e-6)
    assert result["loss"] == pytest.approx(loss, rel=1e-4)
    assert top1 > 40.0  # the weights are trained (chance: 10%), so the class mapping mattered


def test_eval_official_layout_checkpoint(trained, tmp_path, capsys):
    """Official files store ``downsample_layers.*`` and ``stages.i.j.*`` under ``model``."""
    ckpt = torch.load(trained, map_location="cpu", weights_only=True)
    sd = ckpt["model"]
    kwargs = [f"{k}={','.join(map(str, v)) if isinstance(v, tuple) else v}"
              for k, v in ckpt["model_kwargs"].items()]
    official = {}
    for k, v in sd.items():
        k = k.replace("stem.", "downsample_layers.0.", 1) if k.startswith("stem.") else k
        for i in range(1, 4):
            k = k.replace(f"stages.{i}.downsample.", f"downsample_layers.{i}.")
        for i in range(4):
            k = k.replace(f"stages.{i}.blocks.", f"stages.{i}.")
        official[k] = v
    assert "downsample_layers.0.0.weight" in official and "stages.0.0.norm1.weight" in official
    torch.save({"model": official}, tmp_path / "official.pth")
    torch.save({"state_dict": sd}, tmp_path / "timm_style.pth")
    data = tmp_path / "data"
    _make_folder(data, range(10), per_class=2)  # class folders directly under DIR

    results = []
    for name in ("official.pth", "timm_style.pth"):
        rc = cli(["eval", "--model", "biformer_tiny", "--model-kwargs", *kwargs,
                       "--num-classes", "10", "--img-size", "32", "--checkpoint",
                       str(tmp_path / name), "--data", str(data), "--json", "--workers", "0"])
        assert rc == 0
        results.append(json.loads(capsys.readouterr().out.strip().splitlines()[-1]))
    assert results[0]["count"] == 20
    assert results[0]["top1"] == results[1]["top1"] and results[0]["loss"] == results[1]["loss"]
    assert results[0]["top1"] > 20.0


def test_eval_embedded_digits_default(trained, capsys):
    rc = cli(["eval", "--checkpoint", str(trained), "--json", "--workers", "0",
                   "--limit-batches", "2", "--batch-size", "16"])
    assert rc == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["data"] == "embedded digits (val)" and result["count"] == 32


def test_predict_uses_saved_class_names(trained, tmp_path, capsys):
    paths = [tmp_path / "a.png", tmp_path / "b.png"]
    labels = [_digit_png(paths[0], 1500), _digit_png(paths[1], 1600)]
    rc = cli(["predict", *map(str, paths), "--checkpoint", str(trained), "--json",
                   "--topk", "3"])
    assert rc == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.strip().splitlines()]
    assert [line["image"] for line in lines] == list(map(str, paths))

    model, ckpt = _model_from(trained)
    probs = _logits(model, ckpt, paths).softmax(-1)
    for line, p in zip(lines, probs, strict=True):
        top = line["top"]
        assert len(top) == 3
        assert [t["index"] for t in top] == p.topk(3).indices.tolist()
        assert [t["name"] for t in top] == [str(t["index"]) for t in top]  # digits' names
        assert [t["prob"] for t in top] == pytest.approx(p.topk(3).values.tolist(), abs=1e-5)
    assert labels  # real digits, labels known


def test_predict_imagenet_names_for_1000_classes(tmp_path, capsys):
    kwargs = ["dims=16,32,64,64", "depths=1,1,1,1", "head_dim=16"]
    model = timm.create_model("biformer_tiny", num_classes=1000, dims=(16, 32, 64, 64),
                              depths=(1, 1, 1, 1), head_dim=16)
    torch.save(model.state_dict(), tmp_path / "weights.pth")
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (60, 80, 3), dtype=np.uint8)).save(tmp_path / "x.jpg")
    rc = cli(["predict", str(tmp_path / "x.jpg"), "--model", "biformer_tiny",
                   "--model-kwargs", *kwargs, "--checkpoint", str(tmp_path / "weights.pth")])
    assert rc == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == str(tmp_path / "x.jpg") and len(out) == 6
    names = class_names_for(1000, None)
    for row in out[1:]:
        pct, index, name = row.split(maxsplit=2)
        assert name == names[int(index)]
    assert names[0].startswith("tench") and names[999].startswith("toilet tissue")
