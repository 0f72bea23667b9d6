"""Bad input gives a clear error; edge cases (empty batch, dtypes, autocast) work."""

import pytest
import torch

from biformer import ops
from biformer.layers import AttentionLePE, BiLevelRoutingAttention, BRA2d


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(dim=30, num_heads=4), "dim=30 is not divisible by num_heads=4"),
        (dict(dim=32, num_heads=4, qk_dim=18), "qk_dim=18 is not divisible by num_heads=4"),
        (dict(dim=32, n_win=3, topk=10), "topk=10 must be between 1 and the number of regions"),
        (dict(dim=32, topk=0), "topk=0 must be between 1"),
        (dict(dim=32, kv_downsample_mode="fracpool"), "fracpool.*not supported"),
        (dict(dim=32, kv_downsample_mode="conv"), "'conv' is not supported"),
        (dict(dim=32, kv_downsample_mode="bilinear"), "unknown"),
        (dict(dim=32, diff_routing=True), "hard differentiable routing"),
        (dict(dim=32, param_routing=True), "param_routing=True needs diff_routing=True"),
        (dict(dim=32, param_attention="qkvo2"), "param_attention must be"),
        (dict(dim=32, side_dwconv=4), "side_dwconv must be 0 or an odd"),
        (dict(dim=32, kv_downsample_mode="ada_avgpool", kv_per_win=None), "needs kv_per_win"),
    ],
)
def test_construction_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        BiLevelRoutingAttention(**kwargs)


def test_bra2d_construction_errors():
    with pytest.raises(ValueError, match="dim=10 is not divisible by num_heads=4"):
        BRA2d(10, num_heads=4)
    with pytest.raises(ValueError, match="topk=50 must be between 1 and the number of regions n_win"):
        BRA2d(16, num_heads=2, n_win=7, topk=50)


def test_forward_errors_name_the_problem():
    layer = BiLevelRoutingAttention(32, num_heads=4, n_win=2, topk=2)
    with pytest.raises(ValueError, match="expects a 4-D NHWC tensor.*unsqueeze"):
        layer(torch.randn(8, 8, 32))
    with pytest.raises(ValueError, match="input looks NCHW: permute it to NHWC"):
        layer(torch.randn(1, 32, 8, 8))
    with pytest.raises(ValueError, match="built for dim=32 channels"):
        layer(torch.randn(1, 8, 8, 16))
    with pytest.raises(TypeError, match="floating-point input, got torch.int64"):
        layer(torch.ones(1, 8, 8, 32, dtype=torch.long))
    with pytest.raises(ValueError, match="not a multiple of n_win=2; pass auto_pad=True"):
        layer(torch.randn(1, 7, 8, 32))
    with pytest.raises(ValueError, match="input looks NHWC: permute it to NCHW"):
        BRA2d(32, num_heads=4)(torch.randn(1, 8, 8, 32))


def test_operator_errors():
    q = torch.randn(1, 4, 4, 8)
    idx = torch.zeros(1, 4, 2, dtype=torch.long)
    kw = dict(n_win=2, num_heads=2, scale=1.0)
    with pytest.raises(ValueError, match="num_heads=3 must divide"):
        ops.routed_attention(q, q, q, idx, n_win=2, num_heads=3, scale=1.0)
    with pytest.raises(ValueError, match="not a multiple of the region grid"):
        ops.routed_attention(q, q, q, idx, n_win=3, num_heads=2, scale=1.0)
    with pytest.raises(ValueError, match="index must be"):
        ops.routed_attention(q, q, q, idx[:, :3], **kw)
    with pytest.raises(TypeError, match="index must be an integer"):
        ops.routed_attention(q, q, q, idx.float(), **kw)
    with pytest.raises(TypeError, match="share one dtype"):
        ops.routed_attention(q, q.double(), q, idx, **kw)
    with pytest.raises(ValueError, match="unknown backend"):
        ops.routed_attention(q, q, q, idx, backend="cuda", **kw)


def test_empty_batch_returns_empty():
    layer = BiLevelRoutingAttention(16, num_heads=2, n_win=2, topk=2)
    assert layer(torch.randn(0, 4, 4, 16)).shape == (0, 4, 4, 16)
    assert BRA2d(16, num_heads=2, n_win=2)(torch.randn(0, 16, 5, 5)).shape == (0, 16, 5, 5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("backend", ["reference", "chunked"])
def test_dtypes_run_and_agree_with_float64(dtype, backend):
    torch.manual_seed(0)
    layer = BiLevelRoutingAttention(16, num_heads=2, n_win=2, topk=2, backend=backend)
    x = torch.randn(2, 8, 8, 16)
    want = layer.double()(x.double())
    layer = layer.to(dtype)
    xd = x.to(dtype).requires_grad_()
    out = layer(xd)
    assert out.dtype == dtype
    out.float().sum().backward()
    assert xd.grad is not None and torch.isfinite(xd.grad.float()).all()
    tol = {torch.float32: 1e-5, torch.float64: 1e-12}.get(dtype, 5e-2)
    torch.testing.assert_close(out.double(), want, rtol=tol, atol=tol)


@pytest.mark.parametrize("backend", ["reference", "chunked"])
def test_bf16_autocast(backend):
    layer = BiLevelRoutingAttention(16, num_heads=2, n_win=2, topk=2, backend=backend)
    x = torch.randn(2, 8, 8, 16, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = layer(x)
    assert out.dtype == torch.bfloat16
    out.float().sum().backward()
    assert torch.isfinite(x.grad).all()
    torch.testing.assert_close(out.float(), layer(x), rtol=5e-2, atol=5e-2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert AttentionLePE(16, num_heads=2)(x).dtype == torch.bfloat16
