"""The GPU check without a GPU: its preflight (also from a wheelhouse into a fresh venv, offline),
its dry run, its summary (TIMEOUT apart from FAIL, verdicts not measured) and the CPU smoke runs
of its scripts. What they measure needs a GPU; here the scripts themselves are checked."""

from __future__ import annotations

import importlib.metadata
import os
import re
import socket
import subprocess
import sys
import venv
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
GPU = ROOT / "benchmarks" / "gpu"
sys.path.insert(0, str(GPU))

import summary  # noqa: E402

OFFLINE = {"PIP_NO_INDEX": "1", "PIP_CONFIG_FILE": os.devnull, "PIP_FIND_LINKS": "",
           "HTTP_PROXY": "http://127.0.0.1:9", "HTTPS_PROXY": "http://127.0.0.1:9",
           "http_proxy": "http://127.0.0.1:9", "https_proxy": "http://127.0.0.1:9"}


def _run(args, env=None, timeout=900):
    return subprocess.run(args, capture_output=True, text=True, cwd=ROOT, timeout=timeout,
                          env={**os.environ, **(env or {})})


def _write(out: Path, steps: list[str], verdicts: list[str]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "steps.txt").write_text("".join(f"{s}\n" for s in steps))
    (out / "verdicts.txt").write_text("".join(f"{v}\n" for v in verdicts))


def test_summary_reports_timeout_apart_from_failure(tmp_path, capsys):
    _write(tmp_path, ["triton_tests correctness PASS 50 110",
                      "kernel_check correctness TIMEOUT 60 60",
                      "model_check verdicts PASS 90 150"],
           ["(a) BiFormer-S training img/s compiled >= Swin-S compiled: MET 2000 vs 1800 img/s",
            "(d) peak memory: MET 10 vs 30 MiB"])
    assert summary.main([str(tmp_path)]) == 4
    text = capsys.readouterr().out
    assert "correctness: TIMEOUT (kernel_check; nothing failed)" in text
    assert "(b) BRA layer fwd+bwd <= 7x7 window attention, each BiFormer-S stage: NOT MEASURED "\
           "(kernel_check TIMEOUT)" in text
    assert "(a) BiFormer-S training img/s compiled >= Swin-S compiled: MET 2000" in text
    _write(tmp_path, ["triton_tests correctness FAIL 50 110",
                      "kernel_check correctness TIMEOUT 60 60"], [])
    assert summary.main([str(tmp_path)]) == 1
    assert "correctness: FAIL (triton_tests)" in capsys.readouterr().out
    _write(tmp_path, ["triton_tests correctness PASS 50 110"], [])
    assert summary.main([str(tmp_path)]) == 0


def test_dry_run_passes_the_preflight_and_fits_the_budget(tmp_path):
    proc = _run(["bash", "benchmarks/gpu_check.sh", str(tmp_path / "out"), "--dry-run"],
                env={"PYTHON": sys.executable}, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert "preflight: all required packages importable" in proc.stdout
    assert re.search(r"environment: GPU .*torch .*triton .*timm .*TIMM_FUSED_ATTN=", proc.stdout)
    steps = re.findall(r"would run (\w+) \((\w+), limit (\d+)s\)", proc.stdout)
    assert [s[0] for s in steps] == ["triton_tests", "flex_tests", "kernel_check",
                                     "model_check", "autotune"]
    total = int(re.search(r"steps would take at most (\d+)s", proc.stdout).group(1))
    assert total == sum(int(s[2]) for s in steps) and total + 30 <= 480  # + preflight
    assert (tmp_path / "out" / "environment.json").exists()


def test_preflight_lists_every_missing_package_in_one_line(tmp_path):
    env_dir = tmp_path / "bare"
    venv.create(env_dir, with_pip=False)
    proc = _run([str(env_dir / "bin" / "python"), str(GPU / "preflight.py"), "--out",
                 str(tmp_path / "out"), "--dry-run"], timeout=120)
    assert proc.returncode == 3, proc.stdout + proc.stderr
    lines = [line for line in proc.stdout.splitlines() if "missing packages:" in line]
    assert lines, proc.stdout
    missing = lines[0].split("missing packages: ")[1].split(" (")[0].split(", ")
    assert {"torch", "triton", "timm", "torchvision", "numpy", "pytest"} <= set(missing)


# ------------------------------------------------------------------------------------------------
# the wheelhouse: built by `make wheelhouse`, installed offline into a fresh venv


def _pypi_reachable() -> bool:
    try:
        socket.create_connection(("pypi.org", 443), timeout=5).close()
        return True
    except OSError:
        return False


def _torch_closure() -> list[importlib.metadata.Distribution]:
    """torch and the distributions it needs (what a GPU machine with torch already has)."""
    from packaging.requirements import Requirement

    todo, seen, found = ["torch"], set(), []
    while todo:
        name = todo.pop().lower().replace("_", "-")
        if name in seen:
            continue
        seen.add(name)
        try:
            dist = importlib.metadata.distribution(name)
        except importlib.metadata.PackageNotFoundError:
            continue
        found.append(dist)
        for spec in dist.requires or []:
            req = Requirement(spec)
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                todo.append(req.name)
    return found


def _expose_torch_only(env_dir: Path, tmp_path: Path) -> None:
    """A fresh venv sees torch and its dependencies (links in one folder) and nothing else."""
    site = tmp_path / "torch-only"
    site.mkdir()
    for dist in _torch_closure():
        base = Path(dist.locate_file(""))
        tops = {Path(f).parts[0] for f in dist.files or [] if not str(f).startswith("..")}
        for top in tops:
            if (base / top).exists() and not (site / top).exists():
                (site / top).symlink_to(base / top)
    pth = next((env_dir / "lib").glob("python3*/site-packages")) / "torch_only.pth"
    pth.write_text(str(site) + "\n")


@pytest.mark.slow
@pytest.mark.skipif(not _pypi_reachable(), reason="building the wheelhouse needs PyPI")
def test_wheelhouse_builds_small_and_installs_offline_into_a_fresh_venv(tmp_path):
    default = tmp_path / "wheelhouse-312"  # the default target: Python 3.12 manylinux x86_64
    proc = _run(["make", "wheelhouse", f"WHEELHOUSE={default}"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    names = sorted(p.name for p in default.glob("*.whl"))
    assert any(n.startswith("biformer-") for n in names) and any("cp312" in n for n in names)
    assert not any(n.startswith(("torch-", "triton-", "nvidia")) for n in names), names
    assert sum(p.stat().st_size for p in default.iterdir()) < 48 * 2**20  # tree + it < 64 MiB
    # the same preflight with this machine's Python (a torch for 3.12 is not at hand offline)
    local = tmp_path / "wheelhouse-local"
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    proc = _run(["make", "wheelhouse", f"WHEELHOUSE={local}", f"WHEELHOUSE_PYTHON={version}"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    env_dir = tmp_path / "fresh"
    venv.create(env_dir, with_pip=True)
    _expose_torch_only(env_dir, tmp_path)
    out = tmp_path / "out"
    proc = _run(["bash", "benchmarks/gpu_check.sh", str(out), "--dry-run", "--wheelhouse",
                 str(local)], env={"PYTHON": str(env_dir / "bin" / "python"), **OFFLINE})
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    text = proc.stdout
    assert re.search(r"preflight: missing packages: .*timm.*pytest", text), text
    assert re.search(r"preflight: installed \d+ wheels from .* \(offline\)", text), text
    assert "preflight: all required packages importable" in text
    assert "dry run: preflight passed" in text


# ------------------------------------------------------------------------------------------------
# the scripts' CPU smoke runs


@pytest.mark.slow
def test_model_check_smoke_writes_verdict_and_profile(tmp_path):
    proc = _run([sys.executable, str(GPU / "model_check.py"), "--out", str(tmp_path),
                 "--smoke-cpu", "--biformer", "biformer_tiny", "--swin",
                 "swin_tiny_patch4_window7_224"])
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    verdicts = (tmp_path / "verdicts.txt").read_text()
    assert re.search(r"\(a\) BiFormer-S training img/s .*: (MET|MISSED) \d+ vs \d+ img/s",
                     verdicts), verdicts
    assert "Self CPU" in (tmp_path / "profile_biformer_tiny.txt").read_text()


@pytest.mark.slow
def test_autotune_smoke_prints_a_table_entry(tmp_path):
    out = tmp_path / "table.txt"
    proc = _run([sys.executable, "-m", "biformer.ops.backends.triton.autotune", "--smoke",
                 "--budget-s", "0", "--out", str(out)], env={"TRITON_INTERPRET": "1"})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "'float32/q1/k1/topk4/d16x16/hard': dict(block_m=" in out.read_text()


def test_host_overhead_script_runs(tmp_path):
    proc = _run([sys.executable, str(GPU / "host_overhead.py"), "--reps", "5"],
                env={"TRITON_INTERPRET": "1"}, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert len(re.findall(r"stage\d: forward \(no grad\) +[\d.]+ us", proc.stdout)) == 3
