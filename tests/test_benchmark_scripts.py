"""The scripts in benchmarks/ run end to end on small inputs (their numbers are not checked)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from biformer.benchmarking.measure import cpu_peak_supported

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "benchmarks"


def _run(args: list[str], env: dict | None = None, timeout: float = 600):
    return subprocess.run(args, capture_output=True, text=True, cwd=ROOT, timeout=timeout,
                          env={**os.environ, **(env or {})})


@pytest.mark.skipif(not cpu_peak_supported(), reason="peak RSS needs Linux /proc (VmHWM)")
def test_highres_memory_script_measures_each_backend(tmp_path):
    out = tmp_path / "hires.json"
    proc = _run([sys.executable, str(BENCH / "highres_memory.py"), "--sizes", "45x38",
                 "--channels", "8", "--heads", "2", "--backends", "chunked,reference",
                 "--json", str(out)])
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "45x38" in proc.stdout and "peak RSS growth MiB" in proc.stdout
    results = json.loads(out.read_text())["results"]
    assert [r["backend"] for r in results] == ["chunked", "reference"]
    for r in results:
        assert r["status"] == "ok" and r["finite"], r
        assert r["size"] == [45, 38] and r["regions"] == [8, 8]  # regions of 6x5 tokens
        assert r["fwd_s"] > 0 and r["bwd_s"] > 0 and r["growth_bytes"] > 0
        assert r["reference_estimate_bytes"] > 0


def test_highres_memory_script_rejects_bad_arguments():
    proc = _run([sys.executable, str(BENCH / "highres_memory.py"), "--sizes", "600by500"])
    assert proc.returncode == 2 and "size must look like 600x500" in proc.stderr
    proc = _run([sys.executable, str(BENCH / "highres_memory.py"), "--backends", "fast"])
    assert proc.returncode == 2 and "unknown backend 'fast'" in proc.stderr


@pytest.mark.slow
def test_triton_gpu_check_smoke_runs_every_step_in_the_interpreter(tmp_path):
    pytest.importorskip("triton", reason="triton is not installed")
    out = tmp_path / "triton.json"
    proc = _run([sys.executable, str(BENCH / "triton_gpu_check.py"), "--smoke-cpu",
                 "--out", str(out)], env={"TRITON_INTERPRET": "1"})
    assert proc.returncode == 0, (proc.stdout[-2000:], proc.stderr[-2000:])
    report = json.loads(out.read_text())
    assert report["device"] == "cpu (smoke)" and report["passed"] is True
    assert report["accuracy"] and all(r["passed"] for r in report["accuracy"])
    assert report["determinism"] and all(report["determinism"].values())
    assert len(report["timings"]) == 3 and "PASS" in proc.stdout


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU exit path")
def test_gpu_check_script_stops_cleanly_without_a_gpu(tmp_path):
    proc = _run(["bash", str(BENCH / "gpu_check.sh"), str(tmp_path / "out")],
                env={"PYTHON": sys.executable})
    assert proc.returncode == 2
    assert "no usable CUDA GPU" in proc.stderr
