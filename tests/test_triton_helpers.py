"""Helpers of the Triton backend tests (imported by ``test_triton_*.py``), and their own checks.

On a CPU-only machine the kernels run in the Triton interpreter (``TRITON_INTERPRET=1``, set by
``conftest.py``) in float32; on a GPU the same tests run the compiled kernels.
"""

from functools import partial

import torch

from biformer import ops

ON_GPU = torch.cuda.is_available()
DEVICE = "cuda" if ON_GPU else "cpu"
TOL = 1e-4 if not ON_GPU else 2e-4  # fp32, relative to the largest reference magnitude


def assert_close(got, want, tol=TOL, what=""):
    """Max error at most ``tol`` times the largest reference magnitude (at least 1)."""
    assert got.shape == want.shape, what
    assert torch.isfinite(got).all(), f"{what}: non-finite values"
    scale = max(1.0, want.abs().max().item())
    err = (got.float() - want.float()).abs().max().item()
    assert err <= tol * scale, f"{what}: max error {err:.3g} > {tol * scale:.3g}"


def random_index(b, r, topk, generator=None):
    """``[b, r, topk]`` routed ids, distinct within each row."""
    rows = [torch.randperm(r, generator=generator)[:topk] for _ in range(b * r)]
    return torch.stack(rows).view(b, r, topk)


def _backend_call(name):
    """The backend module's own entry (no argument checks), public-op keywords."""
    from biformer.ops.backends import reference, triton

    module = {"triton": triton, "reference": reference}[name]

    def call(q, k, v, index, *, n_win, num_heads, scale, weight=None, key_valid=None):
        pair = (n_win, n_win) if isinstance(n_win, int) else tuple(n_win)
        return module.routed_attention(q, k, v, index, weight, n_win=pair, num_heads=num_heads,
                                       scale=scale, key_valid=key_valid)

    return call


def run_both(q, k, v, index, leaves, *, n_win, heads, scale=0.31, weight=None, key_valid=None,
             want_index=None, direct=False):
    """Forward + backward on the triton and reference backends (the reference with
    ``want_index`` when given); through ``ops.routed_attention``, or with ``direct`` through
    the backends' own entries (no argument checks: ids out of range, fully padded regions).
    Returns ``((out_t, out_r), [(grad_t, grad_r), ...])``."""
    kw = dict(n_win=n_win, num_heads=heads, scale=scale, weight=weight, key_valid=key_valid)
    if direct:
        triton_call, reference_call = _backend_call("triton"), _backend_call("reference")
    else:
        triton_call = partial(ops.routed_attention, backend="triton")
        reference_call = partial(ops.routed_attention, backend="reference")
    out_t = triton_call(q, k, v, index, **kw)
    ref_index = index if want_index is None else want_index
    out_r = reference_call(q, k, v, ref_index, **kw)
    grad_out = torch.randn_like(out_r)
    grads_t = torch.autograd.grad(out_t, leaves, grad_out)
    grads_r = torch.autograd.grad(out_r, leaves, grad_out)
    return (out_t, out_r), list(zip(grads_t, grads_r, strict=True))


def projection(b, h, w, channels, requires_grad=True):
    """A random NHWC projection and its ``(q, k, v)`` channel slices of equal width."""
    proj = torch.randn(b, h, w, 3 * channels, device=DEVICE, requires_grad=requires_grad)
    return proj, proj.split(channels, dim=-1)


def assert_all_close(outs, grads, what=""):
    """Output and every gradient pair of ``run_both`` within ``TOL``."""
    assert_close(*outs, what=f"{what} output")
    for i, (g_t, g_r) in enumerate(grads):
        assert_close(g_t, g_r, what=f"{what} gradient {i}")


def test_random_index_rows_are_distinct_and_in_range():
    index = random_index(3, 9, 4)
    assert index.shape == (3, 9, 4) and index.min() >= 0 and index.max() < 9
    assert all(len(set(row.tolist())) == 4 for row in index.view(-1, 4))


def test_assert_close_fails_on_a_real_difference():
    a = torch.ones(3)
    try:
        assert_close(a + 1e-2, a)
    except AssertionError:
        return
    raise AssertionError("assert_close accepted a 1e-2 error")
