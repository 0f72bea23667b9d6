"""timm's own model tests on every BiFormer model, as timm runs them on its own families.

``tests/test_models.py`` of the installed timm's source distribution runs unmodified in a separate
pytest process with the plugin ``tests/timm_suite/timm_conftest.py`` (which registers our models,
narrows timm's model lists to them and applies our exclusions, each with its reason). The sdist
is never vendored: ``make test`` fetches it into ``.cache/timm-sdist`` (git-ignored) with pip; the
tests here only read that cache, and skip, saying how to fetch it, when it is not there.

After a run, ``.cache/timm-tests/report.md`` holds the table: model x test, passed or excluded.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import timm

from biformer.models import MODEL_NAMES

ROOT = Path(__file__).resolve().parents[1]
SDIST = ROOT / ".cache" / "timm-sdist" / f"timm-{timm.__version__}.tar.gz"
UNPACKED = ROOT / ".cache" / "timm-tests" / f"timm-{timm.__version__}"
REPORT_MD = ROOT / ".cache" / "timm-tests" / "report.md"
PLUGIN_DIR = Path(__file__).parent / "timm_suite"
FETCH = (f"{sys.executable} -m pip download --no-deps --no-binary :all: --dest "
         f"{SDIST.parent.relative_to(ROOT)} timm=={timm.__version__}")
# every test function of timm's file that is parametrized over the timm model list
EXPECTED_TESTS = {
    "test_model_forward", "test_model_backward", "test_model_default_cfgs",
    "test_model_load_pretrained", "test_model_features_pretrained",
    "test_model_forward_torchscript", "test_model_forward_features",
    "test_model_forward_intermediates_features", "test_model_forward_intermediates",
    "test_prune_intermediate_layers_contract", "test_model_forward_fx",
    "test_model_backward_fx", "test_model_forward_fx_torchscript",
}
if "GITHUB_ACTIONS" in os.environ:  # timm's file leaves these out on GitHub's runners
    EXPECTED_TESTS -= {"test_model_load_pretrained", "test_model_features_pretrained",
                       "test_model_forward_fx_torchscript"}


def unpacked_timm_tests() -> Path:
    """timm's ``tests/`` and ``pyproject.toml`` (its pytest markers) from the cached sdist."""
    target = UNPACKED / "tests" / "test_models.py"
    if target.exists():
        return UNPACKED
    if not SDIST.exists():
        pytest.skip(f"timm {timm.__version__}'s source distribution is not cached in "
                    f"{SDIST.parent.relative_to(ROOT)} (make test fetches it; offline now?); "
                    f"fetch it with: {FETCH}")
    prefix = f"timm-{timm.__version__}/"
    with tarfile.open(SDIST) as tar:
        members = [m for m in tar.getmembers() if m.isfile() and (
            m.name.startswith(prefix + "tests/") or m.name == prefix + "pyproject.toml")]
        for member in members:
            member.name = member.name[len(prefix):]
        tar.extractall(UNPACKED, members=members, filter="data")
    return UNPACKED


def run_timm_tests(unpacked: Path, report: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, BIFORMER_TIMM_REPORT=str(report), HF_HUB_OFFLINE="1",
               OMP_NUM_THREADS="1", PYTHONPATH=str(PLUGIN_DIR))
    env.setdefault("TRITON_INTERPRET", "1")
    cmd = [sys.executable, "-m", "pytest", "tests/test_models.py", "-p", "timm_conftest",
           "-p", "no:cacheprovider", "-q", "--tb=short", "-W", "ignore"]
    return subprocess.run(cmd, cwd=unpacked, env=env, capture_output=True, text=True,
                          timeout=1800)


def table(cases: list[dict]) -> str:
    """Markdown: one row per model, one column per timm test."""
    tests = sorted({c["test"] for c in cases})
    cell = {(c["model"].split(".")[0], c["test"]): c for c in cases}
    lines = ["| model | " + " | ".join(tests) + " |", "|---" * (len(tests) + 1) + "|"]
    for model in MODEL_NAMES:
        row = [cell.get((model, t), {}).get("outcome", "-") for t in tests]
        lines.append(f"| {model} | " + " | ".join(row) + " |")
    reasons = sorted({(c["test"], c["reason"]) for c in cases if c["outcome"] == "skipped"})
    lines += ["", *[f"- {test}: {reason}" for test, reason in reasons]]
    return "\n".join(lines) + "\n"


@pytest.fixture(scope="module")
def timm_cases(tmp_path_factory) -> list[dict]:
    unpacked = unpacked_timm_tests()
    report = tmp_path_factory.mktemp("timm") / "report.json"
    proc = run_timm_tests(unpacked, report)
    assert report.exists(), f"timm's tests did not run:\n{proc.stdout[-3000:]}{proc.stderr[-3000:]}"
    cases = json.loads(report.read_text())
    REPORT_MD.parent.mkdir(parents=True, exist_ok=True)
    REPORT_MD.write_text(table(cases))
    return cases


@pytest.mark.slow
@pytest.mark.parametrize("model", MODEL_NAMES)
def test_timm_model_tests_pass_or_are_excluded(timm_cases, model):
    cases = [c for c in timm_cases if c["model"].split(".")[0] == model]
    missing = EXPECTED_TESTS - {c["test"] for c in cases}
    assert not missing, f"timm's tests {sorted(missing)} did not collect {model}"
    failed = [f"{c['test']}: {c.get('reason', '')}" for c in cases if c["outcome"] == "failed"]
    assert not failed, "\n".join(failed)
    skipped = [c for c in cases if c["outcome"] == "skipped"]
    unexplained = [c for c in skipped if not c["reason"].startswith("excluded: ")]
    assert not unexplained, f"skipped without an exclusion: {unexplained}"
    passed = [c for c in cases if c["outcome"] == "passed"]
    assert len(passed) >= 8, f"only {len(passed)} of timm's tests ran on {model}"


@pytest.mark.slow
def test_only_our_models_ran(timm_cases):
    assert {c["model"].split(".")[0] for c in timm_cases} == set(MODEL_NAMES)
