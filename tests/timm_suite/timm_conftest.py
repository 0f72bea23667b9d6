"""Pytest plugin that runs timm's own ``tests/test_models.py`` on the BiFormer models.

``tests/test_timm_models.py`` loads it (``-p timm_conftest``) in a separate pytest run of
the file taken from the installed timm's source distribution, unmodified. It is not a
``conftest.py`` and not a ``test_*.py`` file, so the project's own test run never loads it.

* ``import biformer`` registers the models before timm's test module builds its parameters;
* timm's ``list_models``/``list_pretrained`` keep applying timm's filters (``EXCLUDE_FILTERS``,
  ``NON_STD_FILTERS``, ...); their results are narrowed to our family, so collection stays small;
* timm lists the families whose ``forward_intermediates`` it tests by module name
  (``FEAT_INTER_FILTERS``); ours join that list, as a timm family does when it gains the API;
* cases of models outside our family are deselected; the cases in ``EXCLUDED`` are skipped with
  an ``excluded:`` reason, as timm leaves its own models out of tests they cannot pass;
* every case's outcome goes to the JSON file named by ``BIFORMER_TIMM_REPORT``.
"""

from __future__ import annotations

import fnmatch
import json
import os
from pathlib import Path

import pytest
import timm
import torch

import biformer  # noqa: F401  (registers the models)
from biformer.models import MODEL_NAMES

_TORCHSCRIPT = (
    "TorchScript cannot compile the BRA operator: biformer.ops takes keyword-only arguments "
    "with defaults and picks its backend in Python at call time (torch.jit.script is deprecated "
    "in torch 2.x; torch.compile, torch.export and ONNX export cover these models)"
)
# (timm test function, model pattern) -> why the case is excluded
EXCLUDED: dict[tuple[str, str], str] = {
    ("test_model_forward_torchscript", "biformer*"): _TORCHSCRIPT,
    ("test_model_forward_fx_torchscript", "biformer*"): _TORCHSCRIPT,
}
_WEIGHTS = (
    "needs the official weights, which are not in torch hub's cache and are not downloaded in "
    "tests (timm itself runs this test only outside CI, where it downloads)"
)
_PRETRAINED_TESTS = ("test_model_load_pretrained", "test_model_features_pretrained")
# the module-name list of timm's forward_intermediates families contains these
_FEAT_INTER_MARKERS = ("swin_transformer", "convnext")

_real_list_models = timm.list_models
_real_list_pretrained = timm.list_pretrained


def _base_name(model_name: str) -> str:
    return model_name.split(".", 1)[0]


def _ours(model_name: object) -> bool:
    return isinstance(model_name, str) and _base_name(model_name) in MODEL_NAMES


def _our_modules() -> list[str]:
    return sorted({timm.models.model_entrypoint(n).__module__.rsplit(".", 1)[-1]
                   for n in MODEL_NAMES})


def list_models(filter="", module="", *args, **kwargs):  # noqa: A002 - timm's signature
    """timm's ``list_models`` (its filters apply), narrowed to the BiFormer models."""
    if isinstance(module, (list, tuple)) and all(m in module for m in _FEAT_INTER_MARKERS):
        module = [*module, *_our_modules()]
    return [n for n in _real_list_models(filter, module, *args, **kwargs) if _ours(n)]


def list_pretrained(*args, **kwargs):
    return [n for n in _real_list_pretrained(*args, **kwargs) if _ours(n)]


# small tensors on a shared machine: one intra-op thread avoids OpenMP spin-waits (as our tests do)
torch.set_num_threads(1)

timm.list_models = list_models
timm.list_pretrained = list_pretrained
timm.models.list_models = list_models
timm.models.list_pretrained = list_pretrained


def _cached_weights(model_name: str) -> bool:
    tag = model_name.split(".", 1)[1] if "." in model_name else "in1k"
    hub = Path(torch.hub.get_dir()) / "checkpoints"
    return (hub / f"{_base_name(model_name)}.{tag}.pth").exists()


def exclusion(test_name: str, model_name: str) -> str | None:
    """Why ``test_name`` does not run on ``model_name`` (None: it runs)."""
    for (test, pattern), reason in EXCLUDED.items():
        if test == test_name and fnmatch.fnmatch(model_name, pattern):
            return reason
    if test_name in _PRETRAINED_TESTS and not _cached_weights(model_name):
        return _WEIGHTS
    return None


def pytest_collection_modifyitems(config, items):
    keep, drop = [], []
    for item in items:
        params = getattr(getattr(item, "callspec", None), "params", {})
        model_name = params.get("model_name")
        if not _ours(model_name):
            drop.append(item)
            continue
        keep.append(item)
        reason = exclusion(item.originalname, model_name)
        if reason:
            item.add_marker(pytest.mark.skip(reason=f"excluded: {reason}"))
    if drop:
        config.hook.pytest_deselected(items=drop)
    items[:] = keep


_OUTCOMES: dict[str, dict[str, str]] = {}


def pytest_runtest_logreport(report):
    if report.when != "call" and report.outcome == "passed":
        return
    test, _, rest = report.nodeid.rpartition("::")[2].partition("[")
    model_name = rest.rstrip("]").split("-")[-1]
    entry = _OUTCOMES.setdefault(report.nodeid, dict(test=test, model=model_name))
    if entry.get("outcome") == "failed":
        return
    entry["outcome"] = report.outcome
    if report.skipped:
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else ""
        entry["reason"] = reason.removeprefix("Skipped: ")
    elif report.failed:
        entry["reason"] = report.longreprtext.strip().splitlines()[-1][:500]


def pytest_sessionfinish(session, exitstatus):
    path = os.environ.get("BIFORMER_TIMM_REPORT")
    if path:
        Path(path).write_text(json.dumps(list(_OUTCOMES.values()), indent=1))
