"""The ``triton`` backend of routed attention against the ``reference`` backend.

On a CPU-only machine the kernels run in the Triton interpreter (``TRITON_INTERPRET=1``, set by
``conftest.py``) in float32; on a GPU the same tests run the compiled kernels. Shapes are small
because the interpreter is slow (seconds per configuration).
"""

import dataclasses

import pytest
import torch

from biformer import ops
from biformer.layers import BiLevelRoutingAttention, BRA2d
from biformer.ops.backends import triton as triton_backend
from biformer.ops.checks import check_routed_attention_args

triton = pytest.importorskip("triton", reason="the triton backend needs the triton package")

from .test_triton_helpers import (  # noqa: E402
    DEVICE,
    ON_GPU,
    assert_all_close,
    assert_close,
    projection,
    random_index,
    run_both,
)

# (batch, n_win, query region side, key region side, topk, qk head dim, v head dim, soft)
CASES = {
    "stage1-like-8x8-topk1": (1, 4, 8, 8, 1, 32, 32, False),
    "stage2-like-4x4-topk4-soft": (2, 4, 4, 4, 4, 32, 32, True),
    "stage3-like-2x2-topk16": (2, 4, 2, 2, 16, 32, 32, False),
    "nwin7-2x2-topk16-soft": (1, 7, 2, 2, 16, 32, 32, True),
    "nwin7-side3-topk4-soft": (1, 7, 3, 3, 4, 32, 32, True),
    "kv-downsampled-4to2": (1, 4, 4, 2, 4, 32, 32, True),
    "qk16-v32": (2, 4, 2, 2, 4, 16, 32, False),
    "odd-head-dims-8-24": (1, 4, 3, 3, 2, 8, 24, True),
    "long-keys-10x10-online-softmax": (1, 2, 10, 10, 2, 32, 32, True),
}
SLOW = {"nwin7-2x2-topk16-soft", "long-keys-10x10-online-softmax", "stage3-like-2x2-topk16"}


def _inputs(b, n_win, side, kside, dqk, dv, heads=2):
    h, hk = n_win * side, n_win * kside
    cqk, cv = heads * dqk, heads * dv
    if side == kside:  # strided NHWC slices of one projection, as the layers pass them
        proj = torch.randn(b, h, h, 2 * cqk + cv, device=DEVICE, requires_grad=True)
        return proj.split([cqk, cqk, cv], dim=-1), [proj]
    proj = torch.randn(b, h, h, cqk, device=DEVICE, requires_grad=True)  # own (smaller) grid
    kv = torch.randn(b, hk, hk, cqk + cv, device=DEVICE, requires_grad=True)
    return (proj, *kv.split([cqk, cv], dim=-1)), [proj, kv]


@pytest.mark.parametrize(
    "case", [pytest.param(v, id=k, marks=[pytest.mark.slow] if k in SLOW else [])
             for k, v in CASES.items()])
def test_forward_and_gradients_match_reference(case):
    b, n_win, side, kside, topk, dqk, dv, soft = case
    (q, k, v), leaves = _inputs(b, n_win, side, kside, dqk, dv)
    r = n_win * n_win
    index = random_index(b, r, topk).to(DEVICE)
    weight = None
    if soft:
        weight = torch.softmax(torch.randn(b, r, topk, device=DEVICE), -1).requires_grad_()
        leaves.append(weight)
    outs, grads = run_both(q, k, v, index, leaves, n_win=n_win, heads=2, weight=weight)
    assert outs[0].is_contiguous() and outs[0].shape == (b, n_win * side, n_win * side, 2 * dv)
    assert_all_close(outs, grads)


def test_key_region_chosen_by_nobody_and_by_everybody():
    """Region 0 is routed by every query region, region R-1 by none; repeated ids too."""
    b, n_win, side, heads, topk = 2, 4, 2, 2, 3
    r = n_win * n_win
    index = torch.stack([
        torch.stack([torch.tensor([0, 1 + (i + j) % (r - 2), 1 + (2 * i + j) % (r - 2)])
                     for i in range(r)])
        for j in range(b)
    ]).to(DEVICE)
    index[0, 5] = torch.tensor([0, 3, 3])  # a repeated id counts twice, as in the reference
    assert not (index == r - 1).any() and (index == 0).any(-1).all()
    proj, (q, k, v) = projection(b, n_win * side, n_win * side, heads * 32)
    weight = torch.rand(b, r, topk, device=DEVICE, requires_grad=True)
    outs, grads = run_both(q, k, v, index, [proj, weight], n_win=n_win, heads=heads,
                           weight=weight)
    assert_all_close(outs, grads)
    # keys and values of the unselected (bottom-right) region get exactly zero gradient
    dkv = grads[0][0][..., heads * 32:].reshape(b, n_win, side, n_win, side, -1)
    assert torch.equal(dkv[:, -1, :, -1], torch.zeros_like(dkv[:, -1, :, -1]))
    assert dkv[:, 0, :, 0].abs().min() > 0  # the region everyone chose gets gradient everywhere


def test_masked_padded_keys_match_reference():
    b, n_win, side, heads = 1, 4, 3, 2
    h = n_win * side
    proj, (q, k, v) = projection(b, h, h, heads * 16)
    index = random_index(b, n_win * n_win, 4).to(DEVICE)
    outs, grads = run_both(q, k, v, index, [proj], n_win=n_win, heads=heads,
                           key_valid=(h - 2, h - 1))
    assert_all_close(outs, grads)


def test_query_with_every_routed_key_masked_gets_zeros_not_nan():
    b, n_win, side, heads = 1, 2, 4, 2
    h = n_win * side
    q, k, v = (torch.randn(b, h, h, heads * 16, device=DEVICE, requires_grad=True)
               for _ in range(3))
    index = torch.tensor([[[3], [0], [3], [1]]], device=DEVICE)  # regions 0, 2 see region 3 only
    out = triton_backend.routed_attention(  # the public op refuses an all-padding region
        q, k, v, index, None, n_win=(n_win, n_win), num_heads=heads, scale=0.25,
        key_valid=(side, h),
    )  # region 3 (bottom right) is entirely padding
    assert torch.equal(out[:, :side, :side], torch.zeros_like(out[:, :side, :side]))
    assert torch.equal(out[:, side:, :side], torch.zeros_like(out[:, side:, :side]))
    assert out[:, :side, side:].abs().min() > 0
    grads = torch.autograd.grad(out, (q, k, v), torch.randn_like(out))
    assert all(torch.isfinite(g).all() for g in grads)
    assert torch.equal(grads[0][:, :side, :side], torch.zeros_like(grads[0][:, :side, :side]))


def test_constant_weight_int32_index_and_expanded_grad_out():
    """A weight without gradient, an int32 index and a stride-0 incoming gradient (sum())."""
    b, n_win, side, heads, topk = 1, 2, 4, 2, 2
    x, (q, k, v) = projection(b, n_win * side, n_win * side, heads * 16)
    index = random_index(b, n_win * n_win, topk).to(DEVICE, torch.int32)
    weight = torch.rand(b, n_win * n_win, topk, device=DEVICE)  # a constant: no gradient
    kw = dict(n_win=n_win, num_heads=heads, scale=0.3, weight=weight)
    out = ops.routed_attention(q, k, v, index, backend="triton", **kw)
    expected = ops.routed_attention(q, k, v, index, backend="reference", **kw)
    assert_close(out, expected)
    (g_t,) = torch.autograd.grad(out.sum(), [x])
    (g_r,) = torch.autograd.grad(expected.sum(), [x])
    assert_close(g_t, g_r)


def test_sixteen_bit_inputs():
    """bf16/fp16 run (interpreter: dots upcast to fp32) and stay within 16-bit error."""
    b, n_win, side, heads, topk = 1, 4, 2, 2, 4
    h = n_win * side
    x32 = torch.randn(b, h, h, 3 * heads * 32, device=DEVICE)
    index = random_index(b, n_win * n_win, topk).to(DEVICE)
    kw = dict(n_win=n_win, num_heads=heads, scale=32**-0.5)
    want = ops.routed_attention(*x32.split(heads * 32, -1), index, backend="reference", **kw)
    for dtype, tol in ((torch.bfloat16, 3e-2), (torch.float16, 5e-3)):
        x = x32.to(dtype).requires_grad_()
        out = ops.routed_attention(*x.split(heads * 32, -1), index, backend="triton", **kw)
        assert out.dtype == dtype
        assert_close(out, want, tol=tol, what=str(dtype))
        (grad,) = torch.autograd.grad(out.float().square().sum(), [x])
        assert grad.dtype == dtype and torch.isfinite(grad).all()


def test_legacy_layer_auto_padded_matches_reference_backend():
    torch.manual_seed(1)
    layer = BiLevelRoutingAttention(
        64, num_heads=2, n_win=4, topk=4, auto_pad=True, backend="triton"
    ).to(DEVICE)
    x = torch.randn(2, 13, 10, 64, device=DEVICE, requires_grad=True)  # padded to 16 x 12
    out_t = layer(x)
    layer.backend = "reference"
    out_r = layer(x)
    assert_close(out_t, out_r)
    grad_out = torch.randn_like(out_r)
    g_t = torch.autograd.grad(out_t, [x, layer.qkv.qkv.weight], grad_out)
    g_r = torch.autograd.grad(out_r, [x, layer.qkv.qkv.weight], grad_out)
    for a, b_ in zip(g_t, g_r, strict=True):
        assert_close(a, b_)


def test_nchw_layer_matches_reference_backend():
    """BRA2d hands the backend NHWC views of an NCHW tensor (copied once to NHWC)."""
    torch.manual_seed(2)
    layer = BRA2d(32, num_heads=2, n_win=3, topk=3, backend="triton").to(DEVICE)
    x = torch.randn(1, 32, 10, 8, device=DEVICE, requires_grad=True)  # padded to 12 x 9
    out_t = layer(x)
    layer.backend = "reference"
    out_r = layer(x)
    assert_close(out_t, out_r)
    grad_out = torch.randn_like(out_r)
    assert_close(*(torch.autograd.grad(o, [x], grad_out)[0] for o in (out_t, out_r)))


@pytest.mark.slow
def test_torch_compile_fullgraph_has_no_graph_break():
    class Core(torch.nn.Module):
        def forward(self, x, index):
            q, k, v = x.split(32, dim=-1)
            return ops.routed_attention(  # as the layers call it: indices from topk_routing
                q, k, v, index, n_win=2, num_heads=2, scale=0.25, backend="triton",
                validate=False,
            )

    x = torch.randn(1, 4, 4, 96, device=DEVICE, requires_grad=True)
    index = random_index(1, 4, 2).to(DEVICE)
    compiled = torch.compile(Core(), fullgraph=True)  # raises on any graph break
    out = compiled(x, index)
    q, k, v = x.split(32, dim=-1)
    want = ops.routed_attention(q, k, v, index, n_win=2, num_heads=2, scale=0.25,
                                backend="reference")
    assert_close(out, want)
    grad_out = torch.randn_like(out)
    assert_close(
        torch.autograd.grad(out, [x], grad_out)[0], torch.autograd.grad(want, [x], grad_out)[0]
    )


def test_fake_implementation_matches_real_shapes():
    from torch._subclasses.fake_tensor import FakeTensorMode

    b, n_win, side, heads = 2, 2, 3, 2
    h = n_win * side
    x = torch.randn(b, h, h, 3 * heads * 16, device=DEVICE)
    q, k, v = x.split(heads * 16, dim=-1)
    index = random_index(b, n_win * n_win, 2).to(DEVICE, torch.int32)
    args = (q, k, v, index, None, [n_win, n_win], heads, 0.3, None)
    real = torch.ops.biformer.routed_attention_fwd(*args)
    with FakeTensorMode(allow_non_fake_inputs=True):
        fake = torch.ops.biformer.routed_attention_fwd(*args)
    for r_, f_ in zip(real, fake, strict=True):
        assert r_.shape == f_.shape and r_.dtype == f_.dtype and r_.stride() == f_.stride()


# ------------------------------------------------------------------------------------------------
# can_run: the reasons


def _problem(**changes):
    x = torch.randn(1, 8, 8, 64)
    problem = check_routed_attention_args(x, x, x, torch.zeros(1, 4, 2, dtype=torch.long), None,
                                          (2, 2), 2)
    return dataclasses.replace(problem, **changes)


def test_can_run_accepts_what_the_kernels_support(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    for changes in (
        dict(device_type="cuda"),
        dict(device_type="cuda", dtype=torch.bfloat16, soft_routing=True, masked_keys=True),
        dict(device_type="cuda", dtype=torch.float16, qk_head_dim=24, v_head_dim=256),
    ):
        assert triton_backend.can_run(_problem(**changes)) == [], changes


def test_can_run_explains_refusals(monkeypatch):
    from biformer.ops.backends.triton import support

    cases = [
        (dict(device_type="cuda", dtype=torch.float64), "dtype float64 is not supported"),
        (dict(device_type="cuda", qk_head_dim=512), "head_dim 512 unsupported"),
        (dict(device_type="cuda", soft_routing=True, topk=200), "soft routing with topk=200"),
        (dict(device_type="mps"), "tensors are on mps"),
    ]
    for changes, reason in cases:
        reasons = triton_backend.can_run(_problem(**changes))
        assert any(reason in r for r in reasons), (reason, reasons)
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    reasons = triton_backend.can_run(_problem(device_type="cpu"))
    assert any("tensors are on cpu and TRITON_INTERPRET is not set" in r for r in reasons)
    with pytest.raises(ops.BackendUnavailable, match="TRITON_INTERPRET is not set"):
        x = torch.randn(1, 4, 4, 8)
        ops.routed_attention(x, x, x, torch.zeros(1, 4, 1, dtype=torch.long), n_win=2,
                             num_heads=2, scale=0.5, backend="triton")
    monkeypatch.setattr(support, "_HAS_TRITON", False)
    assert triton_backend.can_run(_problem(device_type="cuda")) == [
        "triton is not installed (pip install triton)"
    ]


def test_auto_never_picks_triton_on_plain_cpu(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    monkeypatch.delenv("BIFORMER_BACKEND", raising=False)
    assert ops.choose_backend(_problem(device_type="cpu")) != "triton"


# ------------------------------------------------------------------------------------------------
# GPU only


def _stage_inputs(side, channels, topk, batch, dtype, seed=0):
    gen = torch.Generator(device="cuda").manual_seed(seed)
    x = torch.randn(batch, side, side, 3 * channels, device="cuda", generator=gen)
    index = torch.stack([torch.randperm(49, device="cuda", generator=gen)[:topk]
                         for _ in range(batch * 49)]).view(batch, 49, topk)
    weight = torch.rand(batch, 49, topk, device="cuda", generator=gen)
    return x.to(dtype), index, weight


@pytest.mark.skipif(not ON_GPU, reason="bit-exact determinism of compiled kernels needs a CUDA GPU")
@pytest.mark.parametrize("side,channels,heads,topk", [(8, 64, 2, 1), (4, 128, 4, 4), (2, 256, 8, 16)])
def test_twenty_runs_at_batch_128_are_bit_identical_on_gpu(side, channels, heads, topk):
    x, index, weight = _stage_inputs(7 * side, channels, topk, 128, torch.bfloat16)
    x.requires_grad_()
    weight.requires_grad_()
    grad_out = torch.randn(128, 7 * side, 7 * side, channels, device="cuda").bfloat16()
    first = None
    for _ in range(20):
        q, k, v = x.split(channels, dim=-1)
        out = ops.routed_attention(q, k, v, index, n_win=7, num_heads=heads, scale=0.2,
                                   weight=weight, backend="triton")
        run = (out, *torch.autograd.grad(out, [x, weight], grad_out))
        if first is None:
            first = run
        assert all(torch.equal(a, b_) for a, b_ in zip(first, run, strict=True))


@pytest.mark.skipif(not ON_GPU, reason="compiled 16-bit kernels need a CUDA GPU")
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("side,channels,heads,topk", [(8, 64, 2, 1), (4, 128, 4, 4), (2, 256, 8, 16)])
def test_16bit_error_at_most_twice_plain_pytorch_on_gpu(side, channels, heads, topk, dtype):
    """The flash-attention criterion: vs an fp64 reference, the kernel's error in ``dtype`` is at
    most twice that of the plain PyTorch (reference) backend in ``dtype``."""
    x, index, _ = _stage_inputs(7 * side, channels, topk, 4, torch.float64)
    grad_out = torch.randn(4, 7 * side, 7 * side, channels, device="cuda", dtype=torch.float64)
    kw = dict(n_win=7, num_heads=heads, scale=channels**-0.5)
    results = {}
    for name, backend, dt in (("exact", "reference", torch.float64),
                              ("plain", "reference", dtype), ("kernel", "triton", dtype)):
        xi = x.detach().to(dt).requires_grad_()
        out = ops.routed_attention(*xi.split(channels, -1), index, backend=backend, **kw)
        (grad,) = torch.autograd.grad(out, [xi], grad_out.to(dt))
        results[name] = (out.double(), grad.double())
    for i, what in enumerate(("output", "gradient")):
        exact = results["exact"][i]
        err = (results["kernel"][i] - exact).abs().max().item()
        plain = (results["plain"][i] - exact).abs().max().item()
        assert err <= 2 * plain + 1e-6, f"{what}: kernel error {err:.3g} > 2 x plain {plain:.3g}"
