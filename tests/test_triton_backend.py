"""The ``triton`` backend of routed attention against the ``reference`` backend.

On a CPU-only machine the kernels run in the Triton interpreter (``TRITON_INTERPRET=1``, set by
``conftest.py``) in float32; on a GPU the same tests run the compiled kernels. Shapes are small
because the interpreter is slow (about a second per configuration).
"""

import dataclasses

import pytest
import torch

from biformer import ops
from biformer.layers import BiLevelRoutingAttention, BRA2d
from biformer.ops.backends import triton as triton_backend
from biformer.ops.checks import check_routed_attention_args

triton = pytest.importorskip("triton", reason="the triton backend needs the triton package")

ON_GPU = torch.cuda.is_available()
DEVICE = "cuda" if ON_GPU else "cpu"
TOL = 1e-4 if not ON_GPU else 2e-4  # fp32, relative to the largest reference magnitude


def _assert_close(got, want, tol=TOL, what=""):
    assert got.shape == want.shape, what
    assert torch.isfinite(got).all(), f"{what}: non-finite values"
    scale = max(1.0, want.abs().max().item())
    err = (got.float() - want.float()).abs().max().item()
    assert err <= tol * scale, f"{what}: max error {err:.3g} > {tol * scale:.3g}"


def _random_index(b, r, topk, generator=None):
    rows = [torch.randperm(r, generator=generator)[:topk] for _ in range(b * r)]
    return torch.stack(rows).view(b, r, topk)


def _run_both(q, k, v, index, leaves, *, regions, heads, scale=0.31, weight=None, key_valid=None):
    """Forward + backward on the triton and reference backends; returns (outs, grads) pairs."""
    kw = dict(regions=regions, num_heads=heads, scale=scale, weight=weight, key_valid=key_valid)
    out_t = ops.routed_attention(q, k, v, index, backend="triton", **kw)
    out_r = ops.routed_attention(q, k, v, index, backend="reference", **kw)
    grad_out = torch.randn_like(out_r)
    grads_t = torch.autograd.grad(out_t, leaves, grad_out)
    grads_r = torch.autograd.grad(out_r, leaves, grad_out)
    return (out_t, out_r), list(zip(grads_t, grads_r, strict=True))


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


@pytest.mark.parametrize("case", list(CASES.values()), ids=list(CASES))
def test_forward_and_gradients_match_reference(case):
    b, n_win, side, kside, topk, dqk, dv, soft = case
    heads = 2
    h, hk = n_win * side, n_win * kside
    r = n_win * n_win
    cqk, cv = heads * dqk, heads * dv
    if side == kside:  # strided NHWC slices of one projection, as the layers pass them
        proj = torch.randn(b, h, h, 2 * cqk + cv, device=DEVICE, requires_grad=True)
        q, k, v = proj.split([cqk, cqk, cv], dim=-1)
        leaves = [proj]
    else:  # per-region downsampled keys/values: their own (smaller) grid
        proj = torch.randn(b, h, h, cqk, device=DEVICE, requires_grad=True)
        kv = torch.randn(b, hk, hk, cqk + cv, device=DEVICE, requires_grad=True)
        q = proj
        k, v = kv.split([cqk, cv], dim=-1)
        leaves = [proj, kv]
    index = _random_index(b, r, topk).to(DEVICE)
    weight = None
    if soft:
        weight = torch.softmax(torch.randn(b, r, topk, device=DEVICE), -1).requires_grad_()
        leaves.append(weight)
    assert not q.is_contiguous() or side != kside
    (out_t, out_r), grads = _run_both(
        q, k, v, index, leaves, regions=n_win, heads=heads, weight=weight
    )
    assert out_t.is_contiguous() and out_t.shape == (b, h, h, cv)
    _assert_close(out_t, out_r, what="output")
    for i, (g_t, g_r) in enumerate(grads):
        _assert_close(g_t, g_r, what=f"gradient {i}")


def test_key_region_chosen_by_nobody_and_by_everybody():
    """Region 0 is routed by every query region, region R-1 by none; repeated ids too."""
    b, n_win, side, heads, topk = 2, 4, 2, 2, 3
    r = n_win * n_win
    index = torch.stack(
        [
            torch.stack([torch.tensor([0, 1 + (i + j) % (r - 2), 1 + (2 * i + j) % (r - 2)])
                         for i in range(r)])
            for j in range(b)
        ]
    ).to(DEVICE)
    index[0, 5] = torch.tensor([0, 3, 3])  # a repeated id counts twice, as in the reference
    assert not (index == r - 1).any() and (index == 0).any(-1).all()
    h = n_win * side
    proj = torch.randn(b, h, h, 3 * heads * 32, device=DEVICE, requires_grad=True)
    q, k, v = proj.split(heads * 32, dim=-1)
    weight = torch.rand(b, r, topk, device=DEVICE, requires_grad=True)
    (out_t, out_r), grads = _run_both(
        q, k, v, index, [proj, weight], regions=n_win, heads=heads, weight=weight
    )
    _assert_close(out_t, out_r, what="output")
    _assert_close(grads[0][0], grads[0][1], what="projection gradient")
    _assert_close(grads[1][0], grads[1][1], what="weight gradient")
    # keys and values of the unselected (bottom-right) region get exactly zero gradient
    dkv = grads[0][0][..., heads * 32:].reshape(b, n_win, side, n_win, side, -1)
    assert torch.equal(dkv[:, -1, :, -1], torch.zeros_like(dkv[:, -1, :, -1]))
    assert dkv[:, 0, :, 0].abs().min() > 0  # the region everyone chose gets gradient everywhere


def test_masked_padded_keys_match_reference():
    b, n_win, side, heads = 1, 4, 3, 2
    h = n_win * side
    proj = torch.randn(b, h, h, 3 * heads * 16, device=DEVICE, requires_grad=True)
    q, k, v = proj.split(heads * 16, dim=-1)
    index = _random_index(b, n_win * n_win, 4).to(DEVICE)
    (out_t, out_r), grads = _run_both(
        q, k, v, index, [proj], regions=n_win, heads=heads, key_valid=(h - 2, h - 1)
    )
    _assert_close(out_t, out_r, what="output")
    _assert_close(grads[0][0], grads[0][1], what="gradient")


def test_query_with_every_routed_key_masked_gets_zeros_not_nan():
    b, n_win, side, heads = 1, 2, 4, 2
    h = n_win * side
    q = torch.randn(b, h, h, heads * 16, device=DEVICE, requires_grad=True)
    k = torch.randn(b, h, h, heads * 16, device=DEVICE, requires_grad=True)
    v = torch.randn(b, h, h, heads * 16, device=DEVICE, requires_grad=True)
    index = torch.tensor([[[3], [0], [3], [1]]], device=DEVICE)  # regions 0, 2 see region 3 only
    out = ops.routed_attention(
        q, k, v, index, regions=n_win, num_heads=heads, scale=0.25, key_valid=(side, h),
        backend="triton",
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
    h = n_win * side
    x = torch.randn(b, h, h, 3 * heads * 16, device=DEVICE, requires_grad=True)
    q, k, v = x.split(heads * 16, dim=-1)
    index = _random_index(b, n_win * n_win, topk).to(DEVICE, torch.int32)
    weight = torch.rand(b, n_win * n_win, topk, device=DEVICE)  # a constant: no gradient
    kw = dict(regions=n_win, num_heads=heads, scale=0.3, weight=weight)
    out = ops.routed_attention(q, k, v, index, backend="triton", **kw)
    expected = ops.routed_attention(q, k, v, index, backend="reference", **kw)
    _assert_close(out, expected)
    (g_t,) = torch.autograd.grad(out.sum(), [x])
    (g_r,) = torch.autograd.grad(expected.sum(), [x])
    _assert_close(g_t, g_r)


def test_sixteen_bit_inputs():
    """bf16/fp16 run (interpreter: dots upcast to fp32) and stay within 16-bit error."""
    b, n_win, side, heads, topk = 1, 4, 2, 2, 4
    h = n_win * side
    x32 = torch.randn(b, h, h, 3 * heads * 32, device=DEVICE)
    index = _random_index(b, n_win * n_win, topk).to(DEVICE)
    kw = dict(regions=n_win, num_heads=heads, scale=32**-0.5)
    want = ops.routed_attention(*x32.split(heads * 32, -1), index, backend="reference", **kw)
    for dtype, tol in ((torch.bfloat16, 3e-2), (torch.float16, 5e-3)):
        x = x32.to(dtype).requires_grad_()
        out = ops.routed_attention(*x.split(heads * 32, -1), index, backend="triton", **kw)
        assert out.dtype == dtype
        _assert_close(out, want, tol=tol, what=str(dtype))
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
    _assert_close(out_t, out_r)
    grad_out = torch.randn_like(out_r)
    g_t = torch.autograd.grad(out_t, [x, layer.qkv.qkv.weight], grad_out)
    g_r = torch.autograd.grad(out_r, [x, layer.qkv.qkv.weight], grad_out)
    for a, b_ in zip(g_t, g_r, strict=True):
        _assert_close(a, b_)


def test_nchw_layer_reads_channel_strided_views():
    """BRA2d hands the backend NHWC views of an NCHW tensor (channel stride H*W)."""
    torch.manual_seed(2)
    layer = BRA2d(32, num_heads=2, n_win=3, topk=3, backend="triton").to(DEVICE)
    x = torch.randn(1, 32, 10, 8, device=DEVICE, requires_grad=True)  # padded to 12 x 9
    out_t = layer(x)
    layer.backend = "reference"
    out_r = layer(x)
    _assert_close(out_t, out_r)
    grad_out = torch.randn_like(out_r)
    _assert_close(*(torch.autograd.grad(o, [x], grad_out)[0] for o in (out_t, out_r)))


def test_torch_compile_fullgraph_has_no_graph_break():
    class Core(torch.nn.Module):
        def forward(self, x, index):
            q, k, v = x.split(32, dim=-1)
            return ops.routed_attention(
                q, k, v, index, regions=2, num_heads=2, scale=0.25, backend="triton"
            )

    x = torch.randn(1, 4, 4, 96, device=DEVICE, requires_grad=True)
    index = _random_index(1, 4, 2).to(DEVICE)
    compiled = torch.compile(Core(), fullgraph=True)  # raises on any graph break
    out = compiled(x, index)
    q, k, v = x.split(32, dim=-1)
    want = ops.routed_attention(
        q, k, v, index, regions=2, num_heads=2, scale=0.25, backend="reference"
    )
    _assert_close(out, want)
    grad_out = torch.randn_like(out)
    _assert_close(
        torch.autograd.grad(out, [x], grad_out)[0], torch.autograd.grad(want, [x], grad_out)[0]
    )


def test_fake_implementation_matches_real_shapes():
    from torch._subclasses.fake_tensor import FakeTensorMode

    b, n_win, side, heads = 2, 2, 3, 2
    h = n_win * side
    x = torch.randn(b, h, h, 3 * heads * 16, device=DEVICE)
    q, k, v = x.split(heads * 16, dim=-1)
    index = _random_index(b, n_win * n_win, 2).to(DEVICE)
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
        dict(device_type="cuda", kv_region=(2, 2), q_region=(85, 71)),
    ):
        assert triton_backend.can_run(_problem(**changes)) == [], changes


def test_can_run_explains_refusals(monkeypatch):
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
        ops.routed_attention(
            x, x, x, torch.zeros(1, 4, 1, dtype=torch.long), regions=2, num_heads=2,
            scale=0.5, backend="triton",
        )
    monkeypatch.setattr(triton_backend, "_HAS_TRITON", False)
    assert triton_backend.can_run(_problem(device_type="cuda")) == [
        "triton is not installed (pip install triton)"
    ]


def test_auto_never_picks_triton_on_plain_cpu(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    monkeypatch.delenv("BIFORMER_BACKEND", raising=False)
    assert ops.choose_backend(_problem(device_type="cpu")) != "triton"


# ------------------------------------------------------------------------------------------------
# GPU only


@pytest.mark.skipif(not ON_GPU, reason="bit-exact determinism of compiled kernels needs a CUDA GPU")
def test_backward_is_bit_identical_on_gpu():
    b, n_win, side, heads, topk = 4, 7, 4, 4, 4
    h = n_win * side
    x = torch.randn(b, h, h, 3 * 128, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    index = _random_index(b, n_win * n_win, topk).cuda()
    weight = torch.rand(b, n_win * n_win, topk, device="cuda", requires_grad=True)
    grads = []
    for _ in range(2):
        q, k, v = x.split(128, dim=-1)
        out = ops.routed_attention(
            q, k, v, index, regions=n_win, num_heads=heads, scale=0.2, weight=weight,
            backend="triton",
        )
        grads.append(torch.autograd.grad(out, [x, weight], torch.ones_like(out)))
    for a, b_ in zip(*grads, strict=True):
        assert torch.equal(a, b_)


@pytest.mark.skipif(not ON_GPU, reason="compiled bf16 kernels need a CUDA GPU")
@pytest.mark.parametrize("side,channels,heads,topk", [(8, 64, 2, 1), (4, 128, 4, 4), (2, 256, 8, 16)])
def test_bf16_on_gpu_close_to_fp32_reference(side, channels, heads, topk):
    b, n_win = 2, 7
    h = n_win * side
    x = torch.randn(b, h, h, 3 * channels, device="cuda")
    index = _random_index(b, n_win * n_win, topk).cuda()
    kw = dict(regions=n_win, num_heads=heads, scale=channels**-0.5)
    want = ops.routed_attention(*x.split(channels, -1), index, backend="reference", **kw)
    out = ops.routed_attention(
        *x.bfloat16().split(channels, -1), index, backend="triton", **kw
    ).float()
    rel = (out - want).square().mean().sqrt() / want.square().mean().sqrt()
    assert rel < 1e-2
