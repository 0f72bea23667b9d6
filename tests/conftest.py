"""Test-wide settings: offline hubs, the Triton interpreter on CPU-only machines, seeded RNG."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402  (must come after the environment is set, before timm/triton)

if not torch.cuda.is_available():
    # Triton kernels run in the interpreter on CPU tensors; must be set before triton is imported.
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield
