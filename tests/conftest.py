"""Test-wide settings: offline hubs (and no run-time installs by ultralytics), one thread per
parallel worker, the Triton interpreter on CPU-only machines, seeded RNG."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("YOLO_AUTOINSTALL", "false")  # ultralytics must never pip install here
if int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")) > 1:
    # Parallel workers share the cores: one thread each (subprocesses inherit it), else the
    # workers' thread pools oversubscribe the machine and the suite gets slower, not faster.
    os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402  (must come after the environment is set, before timm/triton)

if not torch.cuda.is_available():
    # Triton kernels run in the interpreter on CPU tensors; must be set before triton is imported.
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield
