"""biformer train on the embedded digits: a short run learns, writes its outputs, loads in timm."""

from __future__ import annotations

import argparse
import csv
import json
import os

import pytest
import timm
import torch

import biformer
from biformer.checkpoint import atomic_save, select_weights
from biformer.engine import recipe as recipes
from biformer.engine import train as train_mod
from biformer.engine.config import resolve_recipe
from biformer.engine.digits import digits_dataset
from biformer.engine.sampling import SeededSamples

from .cli import cli

TINY_KWARGS = ["dims=16,32,64,64", "depths=1,1,1,1"]


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    train_mod.add_arguments(parser)
    return parser.parse_args(argv)


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    """Two short epochs of the tiny demo model, with EMA, through the command line."""
    out = tmp_path_factory.mktemp("digits")
    torch.manual_seed(0)
    rc = cli([
        "train", "--out", str(out), "--model-kwargs", *TINY_KWARGS, "--epochs", "2",
        "--batch-size", "32", "--limit-train-batches", "12", "--model-ema",
        "--model-ema-decay", "0.9",
    ])
    return out, rc


def test_short_run_learns_and_writes_every_output(demo_run):
    out, rc = demo_run
    assert rc == 0
    for name in ("summary.json", "metrics.csv", "last.pth", "best.pth"):
        assert (out / name).is_file(), name
    assert any(f.startswith("events.out.tfevents") for f in os.listdir(out / "tb"))
    assert not [f for f in os.listdir(out) if f.endswith(".tmp")]  # atomic writes cleaned up

    summary = json.loads((out / "summary.json").read_text())
    assert summary["finished"] is True and summary["epochs_done"] == 2
    assert summary["model"] == "biformer_tiny" and summary["dataset"] == "digits"
    assert summary["final_val_top1"] > 30.0  # 10 classes: chance is 10%
    assert summary["best_val_top1"] >= summary["final_val_top1"] or summary["best_weights"] == "ema"
    assert summary["wall_time_s"] > 0
    assert summary["args"]["recipe"]["epochs"] == 2

    with open(out / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["epoch"]) for r in rows] == [1, 2]
    assert float(rows[1]["val_top1"]) == pytest.approx(summary["final_val_top1"], abs=1e-3)
    assert float(rows[1]["train_loss"]) < float(rows[0]["train_loss"])
    assert "ema_val_top1" in rows[0]


def test_checkpoints_load_weights_only_with_documented_layout(demo_run):
    out, _ = demo_run
    last = torch.load(out / "last.pth", map_location="cpu", weights_only=True)
    for key in ("model", "ema", "optimizer", "position", "rng", "history", "args",
                "model_name", "model_kwargs", "num_classes", "class_names", "data_config"):
        assert key in last, key
    assert "model_ema" not in last and "state_dict_ema" not in last  # timm would prefer those
    assert last["position"]["epoch"] == 2 and last["position"]["step"] == 0
    assert last["class_names"] == [str(i) for i in range(10)]
    assert last["data_config"]["input_size"] == [3, 32, 32]
    # EMA (decay 0.9) and raw weights differ, and read_weights picks each on request
    (raw, _), (ema, entry) = select_weights(last), select_weights(last, use_ema=True)
    assert entry == "ema"
    assert any(not torch.equal(raw[k], ema[k]) for k in raw if raw[k].is_floating_point())

    best = torch.load(out / "best.pth", map_location="cpu", weights_only=True)
    assert set(best) >= {"model", "model_name", "metrics", "weights", "class_names"}
    assert "optimizer" not in best


def test_timm_create_model_loads_our_checkpoint(demo_run):
    """timm's file loader takes ``model`` (not the EMA) and gives the trained network."""
    out, _ = demo_run
    last = torch.load(out / "last.pth", map_location="cpu", weights_only=True)
    kwargs = dict(last["model_kwargs"])
    model = timm.create_model(
        "biformer_tiny", pretrained=True, num_classes=10,
        pretrained_cfg_overlay=dict(file=str(out / "last.pth"), num_classes=10), **kwargs,
    ).eval()
    for k, v in model.state_dict().items():
        assert torch.equal(v, last["model"][k]), k

    ours = timm.create_model("biformer_tiny", num_classes=10, **kwargs).eval()
    biformer.load_checkpoint(ours, out / "last.pth")
    x = torch.randn(4, 3, 32, 32)
    torch.testing.assert_close(model(x), ours(x), rtol=0, atol=0)


def test_eval_command_reproduces_training_validation(demo_run, capsys):
    """``biformer eval`` on the saved weights (trained and EMA) gives the epoch's numbers."""
    out, _ = demo_run
    with open(out / "metrics.csv") as f:
        last_row = list(csv.DictReader(f))[-1]
    for extra, key in (([], "val_top1"), (["--ema"], "ema_val_top1")):
        capsys.readouterr()
        rc = cli(["eval", "--checkpoint", str(out / "last.pth"), "--json", "--workers", "0",
                       *extra])
        assert rc == 0
        result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
        assert result["count"] == 360
        assert result["top1"] == pytest.approx(float(last_row[key]), abs=1e-3)


def test_recipe_defaults_and_overrides():
    demo = resolve_recipe(parse([]), None)
    assert demo == recipes.DEMO
    ref = resolve_recipe(parse(["--data", "somewhere"]), None)
    assert ref.model == "biformer_small" and ref.aa == "rand-m9-mstd0.5-inc1"
    assert (ref.opt, ref.weight_decay, ref.warmup_epochs, ref.smoothing) == ("adamw", 0.05, 5, 0.1)
    assert (ref.mixup, ref.cutmix, ref.reprob, ref.lr_base, ref.lr_base_size) == (
        0.8, 1.0, 0.25, 5e-4, 512)
    assert recipes.drop_path_for(ref) == 0.15
    # flags override single fields; --model-kwargs merges into the demo's
    r = resolve_recipe(parse(["--epochs", "3", "--model-kwargs", "dims=8,16,32,64",
                                        "--aa", "none", "--scale", "0.5", "1.0"]), None)
    assert r.epochs == 3 and r.aa is None and r.scale == (0.5, 1.0)
    assert r.model_kwargs["dims"] == (8, 16, 32, 64)
    assert r.model_kwargs["n_win"] == recipes.DEMO_MODEL_KWARGS["n_win"]
    # another model drops the demo's shrinking
    assert resolve_recipe(parse(["--model", "biformer_base"]), None).model_kwargs == {}
    # a saved recipe (resume) is the base for flags
    saved = recipes.DEMO.replace(epochs=7, lr=1e-3).as_dict()
    r = resolve_recipe(parse(["--epochs", "9"]), saved)
    assert r.epochs == 9 and r.lr == 1e-3


def test_linear_lr_scaling_of_reference_recipe():
    r = recipes.REFERENCE
    assert r.lr is None
    # 5e-4 per 512 images: 8 GPUs x 128 -> 1e-3
    assert r.lr_base * (128 * 8) / r.lr_base_size == pytest.approx(1e-3)


def test_atomic_save_keeps_old_file_when_writing_fails(tmp_path, monkeypatch):
    path = str(tmp_path / "last.pth")
    atomic_save({"x": torch.arange(3)}, path)

    def broken(obj, f, *a, **k):
        f.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(torch.serialization, "save", broken)  # what atomic_save calls
    with pytest.raises(OSError, match="disk full"):
        atomic_save({"x": torch.arange(5)}, path)
    monkeypatch.undo()
    assert torch.equal(torch.load(path, weights_only=True)["x"], torch.arange(3))
    assert os.listdir(tmp_path) == ["last.pth"]


def test_augmentation_depends_only_on_seed_epoch_rank_and_position():
    from timm.data import create_transform

    from biformer.engine.sampling import train_sampler

    tf = create_transform(32, is_training=True, hflip=0.0, color_jitter=0.0, scale=(0.3, 1.0))
    ds = SeededSamples(digits_dataset("train", transform=tf), seed=3)
    sampler = train_sampler(ds, rank=0, world_size=1, seed=3, repeated_aug=False)
    sampler.set_epoch(1)
    ds.set_epoch(1)
    keys = list(sampler)
    assert sorted(k[0] for k in keys) == list(range(len(ds)))  # a permutation of the images
    a = ds[keys[5]][0]
    torch.manual_seed(123)  # the caller's random state does not matter ...
    state = torch.random.get_rng_state()
    assert torch.equal(ds[keys[5]][0], a)
    assert torch.equal(torch.random.get_rng_state(), state)  # ... and is left untouched
    sampler.set_epoch(1, skip=5)  # a resumed epoch continues with the same draws
    assert list(sampler)[0] == keys[5] and len(sampler) == len(keys) - 5
    index = keys[5][0]
    assert not torch.equal(ds[(index, 0, 6)][0], a)  # another draw of the same image differs
    ds.set_epoch(2)
    assert not torch.equal(ds[keys[5]][0], a)  # another epoch, another crop


def test_finetune_resets_a_classifier_of_another_size(tmp_path, capsys):
    kwargs = dict(recipes.DEMO_MODEL_KWARGS, dims=(16, 32, 64, 64), depths=(1, 1, 1, 1))
    source = timm.create_model("biformer_tiny", num_classes=1000, **kwargs)
    torch.save({"model": source.state_dict()}, tmp_path / "in1k.pth")
    result = train_mod.train(parse([
        "--out", str(tmp_path / "ft"), "--finetune", str(tmp_path / "in1k.pth"),
        "--model-kwargs", *TINY_KWARGS, "--epochs", "1", "--limit-train-batches", "1",
        "--limit-val-batches", "1", "--lr", "1e-12", "--warmup-lr", "1e-12", "--min-lr", "1e-12",
        "--no-tensorboard",
    ]))
    assert result.exit_code == 0
    assert "new 10-class classifier" in capsys.readouterr().out
    tuned = dict(result.model.named_parameters())
    assert tuned["head.weight"].shape == (10, 64)
    for name, p in source.named_parameters():
        if not name.startswith("head."):
            torch.testing.assert_close(tuned[name], p, rtol=0, atol=1e-6)
