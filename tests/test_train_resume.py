"""Never lose progress: interrupted runs resume and end with the uninterrupted run's weights."""

from __future__ import annotations

import argparse
import csv
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from biformer.engine import epoch as epoch_mod
from biformer.engine import train as train_mod
from biformer.engine.rng import capture_rng, restore_rng

EPOCHS = 3
STEPS = 5
TINY = [
    "--model-kwargs", "dims=16,32,64,64", "depths=1,1,1,1", "--batch-size", "16",
    "--limit-train-batches", str(STEPS), "--limit-val-batches", "2", "--epochs", str(EPOCHS),
    "--no-tensorboard",
]


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    train_mod.add_arguments(parser)
    return parser.parse_args(argv)


def run(out, *extra: str) -> train_mod.TrainResult:
    return train_mod.train(parse(["--out", str(out), *TINY, *extra]))


def last_weights(out) -> dict[str, torch.Tensor]:
    return torch.load(os.path.join(out, "last.pth"), map_location="cpu", weights_only=True)["model"]


def metric_rows(out) -> list[tuple[str, ...]]:
    """The per-epoch metrics of metrics.csv without the timing columns."""
    with open(os.path.join(out, "metrics.csv")) as f:
        rows = list(csv.DictReader(f))
    keys = ("epoch", "train_loss", "val_loss", "val_top1", "val_top5", "lr")
    return [tuple(r[k] for k in keys) for r in rows]


def assert_same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


@pytest.fixture(scope="module")
def baseline(tmp_path_factory):
    out = tmp_path_factory.mktemp("uninterrupted")
    result = run(out)
    assert result.exit_code == 0
    return out, result


class _StepHook:
    """Stands in for the progress bar; calls ``action`` after the ``at``-th training step."""

    def __init__(self, at: int, action):
        self.at, self.action, self.count = at, action, 0

    def __call__(self, *args, **kwargs):
        return self

    def update(self, n: int = 1) -> None:
        self.count += n
        if self.count == self.at:
            self.action()

    def set_postfix_str(self, *args, **kwargs) -> None:
        pass

    def close(self) -> None:
        pass


def test_sigterm_mid_epoch_saves_and_resume_matches(baseline, tmp_path, monkeypatch, capsys):
    base_out, base = baseline
    at = STEPS + 3  # epoch 2, after its third step
    monkeypatch.setattr(epoch_mod, "progress_bar",
                        _StepHook(at, lambda: os.kill(os.getpid(), signal.SIGTERM)))
    first = run(tmp_path)
    assert first.exit_code == 143
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # handlers restored
    ckpt = torch.load(tmp_path / "last.pth", map_location="cpu", weights_only=True)
    assert (ckpt["position"]["epoch"], ckpt["position"]["step"]) == (1, 3)
    assert len(ckpt["history"]) == 1
    monkeypatch.undo()

    second = run(tmp_path)  # auto-resume from OUT/last.pth
    assert second.exit_code == 0
    assert "resuming from" in capsys.readouterr().out
    assert_same_weights(last_weights(tmp_path), last_weights(base_out))
    assert second.summary["final_val_top1"] == base.summary["final_val_top1"]
    rows, base_rows = metric_rows(tmp_path), metric_rows(base_out)
    assert len(rows) == EPOCHS and rows == base_rows  # the interrupted epoch's loss included


class _Crash(Exception):
    pass


def test_crash_mid_epoch_restarts_epoch_and_matches(baseline, tmp_path, monkeypatch):
    base_out, _ = baseline

    def crash():
        raise _Crash("power cut")

    monkeypatch.setattr(epoch_mod, "progress_bar", _StepHook(2 * STEPS + 2, crash))
    with pytest.raises(_Crash):
        run(tmp_path)
    ckpt = torch.load(tmp_path / "last.pth", map_location="cpu", weights_only=True)
    assert (ckpt["position"]["epoch"], ckpt["position"]["step"]) == (2, 0)  # end of epoch 2
    assert not torch.are_deterministic_algorithms_enabled()  # global state restored
    monkeypatch.undo()

    assert run(tmp_path).exit_code == 0  # restarts epoch 3 from its beginning
    assert_same_weights(last_weights(tmp_path), last_weights(base_out))


@pytest.mark.slow
def test_real_sigterm_to_the_command_then_resume(tmp_path):
    """The command-line process gets SIGTERM from outside during epoch 2, exits 143 after
    saving, and the same command resumes it to the uninterrupted run's weights."""
    longer = ["--limit-train-batches", "25"]  # epochs long enough to be caught in the middle
    assert run(tmp_path / "uninterrupted", *longer).exit_code == 0

    out = tmp_path / "interrupted"
    cmd = [sys.executable, "-m", "biformer", "train", "--out", str(out), *TINY, *longer]
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env)
    try:
        for line in proc.stdout:  # the epoch-1 line comes after last.pth is written
            if line.startswith("epoch 1/"):
                time.sleep(0.3)  # usually lands in epoch 2; between epochs is fine too
                proc.send_signal(signal.SIGTERM)
                break
        rest, err = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 143, err
    assert "SIGTERM" in err and "Traceback" not in err
    assert "interrupted at epoch 2" in rest or "stopped after epoch 1" in rest
    position = torch.load(out / "last.pth", weights_only=True)["position"]
    assert position["epoch"] == 1 and 0 <= position["step"] < 25

    resumed = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming from" in resumed.stdout
    assert_same_weights(last_weights(out), last_weights(tmp_path / "uninterrupted"))


def test_finished_run_is_not_trained_again(baseline, capsys):
    base_out, _ = baseline
    before = os.path.getmtime(base_out / "last.pth")
    result = run(base_out)
    assert result.exit_code == 0
    assert "nothing to do" in capsys.readouterr().out
    assert os.path.getmtime(base_out / "last.pth") == before


def test_no_resume_starts_over(baseline, tmp_path, capsys):
    base_out, _ = baseline
    extra = ["--epochs", "1"]
    assert run(tmp_path, *extra).exit_code == 0
    capsys.readouterr()
    assert run(tmp_path, *extra, "--no-resume").exit_code == 0
    assert "resuming" not in capsys.readouterr().out
    ckpt = torch.load(tmp_path / "last.pth", weights_only=True)
    assert len(ckpt["history"]) == 1


def test_rng_state_round_trip():
    import random

    torch.manual_seed(1)
    np.random.seed(2)
    random.seed(3)
    state = capture_rng()
    torch.load  # noqa: B018  (the state must survive a weights_only save/load)
    buf = __import__("io").BytesIO()
    torch.save(state, buf)
    buf.seek(0)
    state = torch.load(buf, weights_only=True)
    expected = (torch.rand(3), np.random.rand(3), random.random())
    torch.manual_seed(9)
    np.random.seed(9)
    random.seed(9)
    restore_rng(state)
    got = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(expected[0], got[0])
    assert np.array_equal(expected[1], got[1]) and expected[2] == got[2]
