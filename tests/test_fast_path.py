"""The fast model path (NHWC stages, memory-bounded or fused attention) equals the reference path.

The reference path is the same model on the ``reference`` attention backend (the official gather
semantics); the fast path runs the ``chunked`` backend on CPU (and the ``triton`` kernels in the
interpreter when no GPU is present). Outputs and every parameter gradient must agree.
"""

import pytest
import timm
import torch

from biformer.layers import set_backend


def _pair(backend_fast, **kwargs):
    torch.manual_seed(0)
    ref = timm.create_model("biformer_tiny", **kwargs).eval()
    fast = timm.create_model("biformer_tiny", **kwargs).eval()
    set_backend(ref, "reference")
    set_backend(fast, backend_fast)
    fast.load_state_dict(ref.state_dict())
    return ref, fast


def _compare(ref, fast, x, rtol, atol):
    out_r, out_f = ref(x), fast(x)
    torch.testing.assert_close(out_f, out_r, rtol=rtol, atol=atol)
    g = torch.randn_like(out_r)
    grads_r = torch.autograd.grad(out_r, list(ref.parameters()), g)
    grads_f = torch.autograd.grad(out_f, list(fast.parameters()), g)
    names = [n for n, _ in ref.named_parameters()]
    for name, a, b in zip(names, grads_f, grads_r, strict=True):
        torch.testing.assert_close(a, b, rtol=rtol * 10, atol=atol * 10, msg=name)


def test_chunked_model_equals_reference_model(monkeypatch):
    monkeypatch.setenv("BIFORMER_CHUNK_MB", "0.05")  # several tiles per layer
    ref, fast = _pair("chunked", num_classes=10, depths=(1, 1, 2, 1))
    x = torch.randn(2, 3, 112, 112)
    _compare(ref, fast, x, rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_triton_model_equals_reference_model_in_interpreter():
    from biformer.ops.checks import Problem
    from biformer.ops.dispatch import backend_reasons

    probe = Problem("cpu", torch.float32, 1, (2, 2), (2, 2), (2, 2), 1, 1, 32, 32, False, False,
                    True)
    reasons = backend_reasons("triton", probe)
    if reasons:
        pytest.skip("triton backend unavailable here: " + "; ".join(reasons))
    ref, fast = _pair("triton", num_classes=10, depths=(1, 1, 1, 1), dims=(32, 64, 128, 256),
                      n_win=(4, 2, 2, 1), topks=(1, 2, 4, -2))
    x = torch.randn(1, 3, 64, 64)
    _compare(ref, fast, x, rtol=1e-4, atol=1e-5)
