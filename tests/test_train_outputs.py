"""What a training run leaves behind is true: TensorBoard after resume, the timm/HF folder of the
final weights, a full disk, non-finite numbers, a held-out validation split, longer runs."""

from __future__ import annotations

import csv
import errno
import json

import numpy as np
import pytest
import timm
import torch
from PIL import Image

from biformer.checkpoint import files as files_mod
from biformer.engine import trainer as trainer_mod

from .cli import TINY_TRAIN, assert_one_line_error, run


def _tb_steps(out, tag: str) -> list[int]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(out / "tb"))
    acc.Reload()
    return [e.step for e in acc.Scalars(tag)]


def _epochs_in_csv(out) -> list[int]:
    with open(out / "metrics.csv") as f:
        return [int(r["epoch"]) for r in csv.DictReader(f)]


def _train(capsys, out, *extra):
    args = [a for a in TINY_TRAIN if a != "--no-tensorboard"]
    return run(capsys, "train", "--out", str(out), *args, *extra)


@pytest.mark.slow
def test_tensorboard_after_resume_has_one_point_per_epoch(tmp_path, capsys):
    out = tmp_path / "run"
    assert _train(capsys, out, "--epochs", "2")[0] == 0
    rc, stdout, _ = _train(capsys, out, "--epochs", "3")  # resume: the schedule is stretched
    assert rc == 0 and "resuming from" in stdout
    steps = _tb_steps(out, "val/top1")
    assert _epochs_in_csv(out) == [1, 2, 3]
    assert steps == [2, 4, 6]  # two updates per epoch, nothing purged or repeated
    assert _train(capsys, out, "--epochs", "3")[0] == 0  # finished: nothing to do ...
    assert _tb_steps(out, "val/top1") == steps  # ... and the last epoch's points stay
    last = torch.load(out / "last.pth", weights_only=True)
    assert last["args"]["recipe"]["epochs"] == 3  # the recorded recipe is the one used


def test_final_and_best_weights_in_the_formats_people_share(tmp_path, capsys):
    out = tmp_path / "run"
    rc, stdout, err = _train(capsys, out, "--epochs", "1", "--no-tensorboard")
    assert rc == 0, err
    from safetensors.torch import load_file

    best = load_file(str(out / "best.safetensors"))
    best_pth = torch.load(out / "best.pth", weights_only=True)
    assert best_pth["format"] == "biformer-weights-1" and best_pth["epoch"] == 1
    assert all(torch.equal(best[k], v) for k, v in best_pth["model"].items())
    config = json.loads((out / "config.json").read_text())
    assert config["architecture"] == "biformer_tiny" and config["num_classes"] == 10
    model = timm.create_model(f"local-dir:{out}", pretrained=True).eval()
    last = torch.load(out / "last.pth", weights_only=True)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in last["model"].items())
    assert model.pretrained_cfg["input_size"] == (3, 32, 32)


class _FillingDisk:
    """A file on a disk with ``room`` bytes left: the write that passes it raises ENOSPC, as the
    operating system's does (``torch.save`` turns that into a RuntimeError of its own)."""

    def __init__(self, file, room: int):
        self.file, self.room = file, room

    def write(self, data) -> int:
        if len(data) > self.room:
            raise OSError(errno.ENOSPC, "No space left on device")
        self.room -= len(data)
        return self.file.write(data)

    def __getattr__(self, name):
        return getattr(self.file, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.file.close()


def test_a_full_disk_keeps_the_previous_checkpoint(tmp_path, capsys, monkeypatch):
    out = tmp_path / "run"
    assert _train(capsys, out, "--epochs", "1", "--no-tensorboard")[0] == 0
    before = (out / "last.pth").read_bytes()

    def filling_open(path, mode="r", *args, **kwargs):
        f = open(path, mode, *args, **kwargs)
        return _FillingDisk(f, room=64 * 1024) if ".last.pth." in str(path) else f

    monkeypatch.setattr(files_mod, "open", filling_open, raising=False)  # the module's open()
    rc, _, err = _train(capsys, out, "--epochs", "2", "--no-tensorboard")
    assert_one_line_error(rc, err, "the disk is full", "previous file is kept", status=1)
    assert (out / "last.pth").read_bytes() == before
    assert not list(out.glob(".*.tmp"))


def test_the_disk_error_is_raised_as_itself_not_as_torch_save_reports_it(tmp_path, monkeypatch):
    def filling_open(path, mode="r", *args, **kwargs):
        return _FillingDisk(open(path, mode, *args, **kwargs), room=1000)

    monkeypatch.setattr(files_mod, "open", filling_open, raising=False)
    with pytest.raises(OSError) as info:
        files_mod.atomic_save({"w": torch.randn(10_000)}, tmp_path / "x.pth")
    assert info.value.errno == errno.ENOSPC
    assert isinstance(info.value.__cause__, RuntimeError)  # what torch.save itself raised
    assert not list(tmp_path.iterdir())


def test_a_replaced_torch_save_is_not_used(tmp_path, monkeypatch):
    """ultralytics replaces ``torch.save`` with a retrying wrapper when imported; a retry into the
    same open file would append a second archive to half of the first."""
    def half_then_retry(obj, f, *args, **kwargs):
        f.write(b"PK\x03\x04 half an archive")
        return torch.serialization.save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", half_then_retry)
    w = torch.randn(5, 7)
    files_mod.atomic_save({"w": w}, tmp_path / "x.pth")
    assert torch.equal(files_mod.read_file(tmp_path / "x.pth")["w"], w)


def test_non_finite_validation_is_never_saved(tmp_path, capsys, monkeypatch):
    real = trainer_mod.evaluate

    def poisoned(*args, **kwargs):
        return {**real(*args, **kwargs), "loss": float("nan")}

    monkeypatch.setattr(trainer_mod, "evaluate", poisoned)
    out = tmp_path / "run"
    rc, _, err = _train(capsys, out, "--epochs", "1", "--no-tensorboard")
    assert_one_line_error(rc, err, "val_loss are not finite after epoch 1", "nothing saved")
    assert not (out / "last.pth").exists() and not (out / "best.pth").exists()


def test_without_a_val_folder_a_seeded_fraction_is_held_out(tmp_path, capsys):
    data = tmp_path / "data" / "train"
    for c in range(3):
        for i in range(10):
            (data / str(c)).mkdir(parents=True, exist_ok=True)
            pixels = np.random.default_rng(10 * c + i).integers(0, 255, (32, 32, 3), np.uint8)
            Image.fromarray(pixels).save(data / str(c) / f"{i}.png")
    base = ["--data", str(tmp_path / "data"), "--model", "biformer_tiny", "--img-size", "32",
            "--aa", "none", "--mixup", "0", "--cutmix", "0", "--reprob", "0", "--workers", "0",
            *TINY_TRAIN[:7], "--batch-size", "8", "--epochs", "1", "--no-tensorboard"]
    rc, _, err = run(capsys, "train", "--out", str(tmp_path / "a"), *base)
    assert_one_line_error(rc, err, "has no val/ folder", "--val-split 0.1")
    rc, out, err = run(capsys, "train", "--out", str(tmp_path / "b"), *base,
                       "--val-split", "0.2")
    assert rc == 0, err
    assert "0.2 of" in out and "held out (seed 0)" in out and "24 training / 6 validation" in out
