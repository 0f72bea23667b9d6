"""Bad input when a run resumes: one line naming what differs, and the checkpoint untouched.

One finished run of one epoch (the fixture); each row resumes it with the flags of the row and
expects a stable phrase of the one-line refusal.
"""

from __future__ import annotations

import pytest
import torch

from .cli import TINY_KWARGS, TINY_TRAIN, assert_one_line_error, cli, run

ROWS = [
    (["--lr", "0.5"], "--lr 0.5 (checkpoint: 0.002)"),
    (["--batch-size", "8"], "--batch-size 8 (checkpoint: 16)"),
    (["--opt", "sgd"], "--opt sgd (checkpoint: adamw)"),
    (["--weight-decay", "0.5"], "--weight-decay 0.5"),
    (["--warmup-epochs", "3"], "--warmup-epochs 3"),
    (["--sched", "step"], "--sched step"),
    (["--smoothing", "0.2"], "--smoothing 0.2"),
    (["--scale", "0.2", "1.0"], "--scale 0.2 1.0"),
    (["--aa", "rand-m9-mstd0.5-inc1"], "--aa rand-m9-mstd0.5-inc1 (checkpoint: none)"),
    (["--img-size", "64"], "--img-size 64 (checkpoint: 32)"),
    (["--seed", "3"], "--seed 3"),
    (["--drop-path", "0.2"], "--drop-path 0.2"),
    (["--model-kwargs", "dims=16,32,64,96"], "--model-kwargs"),
    (["--limit-train-batches", "3"], "--limit-train-batches 3 (checkpoint: 2)"),
    (["--data", "{tmp}"], "--data {tmp} (checkpoint: none)"),
    (["--model", "biformer_small"], "was trained as biformer_tiny, not biformer_small"),
    (["--num-classes", "5"], "--num-classes 5, but the data has 10 classes"),
    (["--resume", "{out}/best.pth"], "holds weights only (best.pth); resume from last.pth"),
    (["--resume", "{tmp}/garbage.pth"], "corrupt or truncated"),
    (["--resume", "{out}/last.pth", "--no-resume"], "contradict"),
]


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("resume")
    out = tmp / "run"
    assert cli(["train", "--out", str(out), *TINY_TRAIN, "--epochs", "1"]) == 0
    (tmp / "garbage.pth").write_bytes(b"\x00\x01garbage" * 50)
    return tmp, out


@pytest.mark.parametrize("flags,phrase", ROWS, ids=[r[0][0] for r in ROWS])
def test_resume_refuses_what_it_cannot_honour(flags, phrase, finished, capsys):
    tmp, out = finished
    before = (out / "last.pth").read_bytes()
    fill = {"tmp": str(tmp), "out": str(out)}
    argv = ["train", "--out", str(out), *TINY_TRAIN, "--epochs", "2",
            *(f.format(**fill) for f in flags)]
    rc, _, err = run(capsys, *argv)
    assert_one_line_error(rc, err, phrase.format(**fill))
    assert (out / "last.pth").read_bytes() == before


def test_more_epochs_and_other_workers_are_honoured(finished, capsys, tmp_path):
    _, out = finished
    import shutil

    copy = tmp_path / "run"
    shutil.copytree(out, copy)
    rc, stdout, err = run(capsys, "train", "--out", str(copy), *TINY_TRAIN, "--epochs", "2",
                          "--workers", "1", "--model-kwargs", *TINY_KWARGS)
    assert rc == 0, err
    assert "resuming from" in stdout
    last = torch.load(copy / "last.pth", weights_only=True)
    assert last["position"]["epoch"] == 2 and last["args"]["recipe"]["epochs"] == 2
    assert last["args"]["recipe"]["num_workers"] == 1
