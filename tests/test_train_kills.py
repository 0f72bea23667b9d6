"""Kills and neighbours, in real processes: a SIGKILL during the best.pth write, its leftover
temporary file, two runs into one folder, and a resume with other flags."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from .cli import TINY_TRAIN

KILL_DURING_BEST = r"""
import os, signal, sys
from biformer.checkpoint import files
from biformer.engine import run_folder
real = run_folder.atomic_save
def dying(obj, path):
    if str(path).endswith("best.pth") and obj.get("epoch") == 2:
        with open(files.tmp_name(path), "wb") as f:   # half a file, then the power goes
            f.write(b"PK\x03\x04 half written")
        os.kill(os.getpid(), signal.SIGKILL)
    real(obj, path)
run_folder.atomic_save = dying
from biformer.engine import trainer
real_eval, seen = trainer.evaluate, []
def rising(*args, **kwargs):  # every epoch the best so far: epoch 2 writes best.pth
    seen.append(1)
    return {**real_eval(*args, **kwargs), "top1": 10.0 * len(seen)}
trainer.evaluate = rising
from biformer.cli import main
sys.exit(main(sys.argv[1:]))
"""


def _command(out, *extra: str) -> list[str]:
    return ["train", "--out", str(out), *TINY_TRAIN, *extra]


def _env() -> dict[str, str]:
    return dict(os.environ, PYTHONUNBUFFERED="1", HF_HUB_OFFLINE="1")


def _biformer(*argv: str, code: str | None = None, timeout: int = 300):
    prefix = ["-c", code] if code else ["-m", "biformer"]
    return subprocess.run([sys.executable, *prefix, *argv], capture_output=True, text=True,
                          timeout=timeout, env=_env())


@pytest.mark.slow
def test_kill_during_the_best_write_is_repaired_on_resume(tmp_path):
    out = tmp_path / "run"
    killed = _biformer(*_command(out, "--epochs", "3"), code=KILL_DURING_BEST)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    last = torch.load(out / "last.pth", weights_only=True)
    assert last["best"] == {"val_top1": 20.0, "epoch": 2, "weights": "model"}
    orphans = [p for p in os.listdir(out) if p.startswith(".best.pth.") and p.endswith(".tmp")]
    assert orphans, os.listdir(out)
    assert torch.load(out / "best.pth", weights_only=True)["epoch"] == 1  # stale
    assert last["position"]["epoch"] == 2

    resumed = _biformer(*_command(out, "--epochs", "2"))  # no further epoch: just the repair
    assert resumed.returncode == 0, resumed.stderr
    assert "removed 1 unfinished file" in resumed.stdout
    assert "best.pth did not hold the best epoch 2" in resumed.stdout
    assert not [p for p in os.listdir(out) if p.endswith(".tmp")]
    best = torch.load(out / "best.pth", weights_only=True)
    summary = json.loads((out / "summary.json").read_text())
    assert best["epoch"] == summary["best_epoch"] == 2
    for k, v in best["model"].items():  # the weights of the end of epoch 2, from last.pth
        assert torch.equal(v, last["model"][k]), k


@pytest.mark.slow
def test_two_runs_into_one_folder(tmp_path):
    out = tmp_path / "run"
    first = subprocess.Popen(
        [sys.executable, "-m", "biformer", *_command(out, "--epochs", "50")],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env())
    try:
        deadline = time.time() + 120
        while not (out / ".lock").exists() and time.time() < deadline:
            time.sleep(0.2)
        assert (out / ".lock").read_text().split()[0] == str(first.pid)
        second = _biformer(*_command(out, "--epochs", "1"))
        assert second.returncode == 2
        assert f"being written by another run (PID {first.pid}" in second.stderr
        assert second.stderr.count("\n") == 1 and "Traceback" not in second.stderr
    finally:
        first.send_signal(signal.SIGTERM)
        first.communicate(timeout=120)
    assert not (out / ".lock").exists()  # released on the way out

    (out / ".lock").write_text("999999\n")  # a run that died without releasing it
    taken = _biformer(*_command(out, "--epochs", "1", "--no-resume"))
    assert taken.returncode == 0, taken.stderr
    assert "taking over" in taken.stdout and "999999" in taken.stdout


@pytest.mark.slow
def test_resume_with_other_flags_is_refused_and_records_nothing(tmp_path):
    out = tmp_path / "run"
    assert _biformer(*_command(out, "--epochs", "1")).returncode == 0
    before = (out / "last.pth").read_bytes()
    refused = _biformer(*_command(out, "--epochs", "2", "--lr", "0.5", "--batch-size", "8",
                                  "--opt", "sgd"))
    assert refused.returncode == 2
    line = refused.stderr.strip()
    assert "\n" not in line and "Traceback" not in line
    for phrase in ("--lr 0.5 (checkpoint: 0.002)", "--batch-size 8 (checkpoint: 16)",
                   "--opt sgd (checkpoint: adamw)", "--no-resume"):
        assert phrase in line, line
    assert "--epochs" not in line  # more epochs is a well-defined change
    assert (out / "last.pth").read_bytes() == before
    summary = json.loads((out / "summary.json").read_text())
    assert summary["args"]["recipe"]["lr"] == 0.002
