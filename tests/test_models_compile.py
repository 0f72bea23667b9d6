"""torch.compile of a whole BiFormer model matches eager (CPU: inductor's C++ backend)."""

from __future__ import annotations

import pytest
import timm
import torch

import biformer


@pytest.mark.slow  # the first inductor compile in a fresh cache takes one to two minutes on CPU
def test_compiled_biformer_tiny_matches_eager():
    torch._dynamo.reset()
    model = timm.create_model("biformer_tiny", num_classes=10).eval()
    biformer.layers.set_backend(model, "reference")
    x = torch.randn(2, 3, 112, 112)
    compiled = torch.compile(model)
    with torch.no_grad():
        expected = model(x)
        got = compiled(x)
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
        y = torch.randn(2, 3, 112, 112)  # a second input, same shapes: no recompilation needed
        torch.testing.assert_close(compiled(y), model(y), rtol=1e-4, atol=1e-4)
