"""Bad input to the attention layers: one row per mistake, one clear line each; and the edge
cases that are not mistakes (empty batch, every dtype, autocast) work.

Each row is a construction or a forward call and the stable phrase of its one-line message.
"""

from __future__ import annotations

import pytest
import torch

from biformer.layers import (
    Attention,
    AttentionLePE,
    AttentionLePE2d,
    BiLevelRoutingAttention,
    BRA2d,
)

from .test_bad_input_ops import raises_one_line

V, T = ValueError, TypeError


def bra(**kw):
    return BiLevelRoutingAttention(**(dict(dim=32, num_heads=4, n_win=2, topk=2) | kw))


def bra2d(**kw):
    return BRA2d(**(dict(dim=32, num_heads=4, n_win=2, topk=2) | kw))


def nhwc(h=8, w=8, c=32, **kw):
    return torch.randn(1, h, w, c, **kw)


def nchw(h=8, w=8, c=32):
    return torch.randn(1, c, h, w)


CONSTRUCTION = [
    ("dim-not-divisible", lambda: bra(dim=30), V, "dim=30 is not divisible by num_heads=4"),
    ("qk_dim-not-divisible", lambda: bra(qk_dim=18), V, "qk_dim=18 is not divisible by num_heads=4"),
    ("dim-zero", lambda: bra(dim=0), V, "dim must be >= 1, got 0"),
    ("dim-float", lambda: bra(dim=32.0), T, "dim must be an int, got 32.0"),
    ("qk_dim-negative", lambda: bra(qk_dim=-4), V, "qk_dim must be >= 1, got -4"),
    ("heads-zero", lambda: bra(num_heads=0), V, "num_heads must be >= 1"),
    ("heads-bool", lambda: bra(num_heads=True), T, "num_heads must be an int"),
    ("n_win-float", lambda: bra(n_win=2.0), T, "n_win must be an int, got 2.0 (float)"),
    ("n_win-bool", lambda: bra(n_win=True, topk=1), T, "n_win must be an int, got True (bool)"),
    ("n_win-zero", lambda: bra(n_win=0), V, "n_win must be >= 1"),
    ("topk-too-big", lambda: bra(n_win=3, topk=10), V,
     "topk=10 must be between 1 and the number of regions n_win**2=9"),
    ("topk-zero", lambda: bra(topk=0), V, "topk=0 must be between 1"),
    ("topk-float", lambda: bra(topk=2.0), T, "topk must be an int"),
    ("side_dwconv-even", lambda: bra(side_dwconv=4), V, "side_dwconv must be 0 or an odd"),
    ("side_dwconv-negative", lambda: bra(side_dwconv=-1), V, "side_dwconv must be >= 0, got -1"),
    ("side_dwconv-float", lambda: bra(side_dwconv=3.0), T, "side_dwconv must be an int"),
    ("fracpool", lambda: bra(kv_downsample_mode="fracpool"), V, "'fracpool' is not supported"),
    ("conv", lambda: bra(kv_downsample_mode="conv"), V, "'conv' is not supported"),
    ("mode-unknown", lambda: bra(kv_downsample_mode="bilinear"), V, "'bilinear' is unknown"),
    ("hard-diff-routing", lambda: bra(diff_routing=True), V, "hard differentiable routing"),
    ("param-routing", lambda: bra(param_routing=True), V, "param_routing=True needs diff_routing"),
    ("param_attention", lambda: bra(param_attention="qkvo2"), V, "param_attention must be"),
    ("ada-kv_per_win-none", lambda: bra(kv_downsample_mode="ada_avgpool", kv_per_win=None), V,
     "needs kv_per_win >= 1"),
    ("ada-kv_per_win-zero", lambda: bra(kv_downsample_mode="ada_maxpool", kv_per_win=0), V,
     "needs kv_per_win >= 1, got 0"),
    ("avgpool-ratio-zero", lambda: bra(kv_downsample_mode="avgpool", kv_downsample_ratio=0), V,
     "needs kv_downsample_ratio >= 1, got 0"),
    ("ada-kv_per_win-float", lambda: bra(kv_downsample_mode="ada_avgpool", kv_per_win=2.5), T,
     "kv_per_win must be an int"),
    ("avgpool-ratio-float", lambda: bra(kv_downsample_mode="avgpool", kv_downsample_ratio=2.5),
     T, "kv_downsample_ratio must be an int"),
    ("qk_dim-zero", lambda: bra(qk_dim=0), V, "qk_dim must be >= 1"),
    ("backend-unknown", lambda: bra(backend="fast"), V, "unknown backend 'fast'"),
    ("bra2d-dim-not-divisible", lambda: bra2d(dim=10), V, "dim=10 is not divisible by num_heads"),
    ("bra2d-topk-too-big", lambda: bra2d(n_win=7, topk=50), V,
     "topk=50 must be between 1 and the number of regions n_win"),
    ("bra2d-n_win-float", lambda: bra2d(n_win=7.0), T, "n_win must be an int"),
    ("bra2d-dim-zero", lambda: bra2d(dim=0), V, "dim must be >= 1"),
    ("bra2d-side_dwconv-even", lambda: bra2d(side_dwconv=2), V, "side_dwconv must be 0 or an odd"),
    ("bra2d-side_dwconv-negative", lambda: bra2d(side_dwconv=-3), V, "side_dwconv must be >= 0"),
    ("bra2d-backend-unknown", lambda: bra2d(backend="cuda"), V, "unknown backend 'cuda'"),
    ("attention-dim-zero", lambda: Attention(0, num_heads=1), V, "dim must be >= 1"),
    ("attention-heads", lambda: Attention(30, num_heads=4), V, "dim=30 is not divisible"),
    ("lepe-side_dwconv-even", lambda: AttentionLePE(32, 4, side_dwconv=4), V, "0 or an odd"),
    ("lepe-side_dwconv-negative", lambda: AttentionLePE(32, 4, side_dwconv=-1), V, ">= 0"),
    ("lepe2d-side_dwconv-even", lambda: AttentionLePE2d(32, 4, side_dwconv=6), V, "0 or an odd"),
    ("lepe2d-dim-zero", lambda: AttentionLePE2d(0, num_heads=1), V, "dim must be >= 1"),
]
FORWARD = [
    ("3d-input", lambda: bra()(nhwc()[0]), V, "expects a 4-D NHWC tensor"),
    ("3d-input-hint", lambda: bra()(nhwc()[0]), V, "add a batch dimension with x.unsqueeze(0)"),
    ("nchw-to-nhwc-layer", lambda: bra()(nchw()), V, "input looks NCHW: permute it to NHWC"),
    ("channels", lambda: bra()(nhwc(c=16)), V, "built for dim=32 channels"),
    ("int-input", lambda: bra()(nhwc().long()), T, "floating-point input, got torch.int64"),
    ("not-a-tensor", lambda: bra()([1.0]), T, "expects a torch.Tensor, got list"),
    ("not-multiple", lambda: bra()(nhwc(h=7)), V, "not a multiple of n_win=2; pass auto_pad=True"),
    ("empty-map", lambda: bra()(nhwc(h=0)), V, "got an empty NHWC map (1, 0, 8, 32)"),
    ("empty-map-auto-pad", lambda: bra(auto_pad=True)(nhwc(w=0)), V, "got an empty NHWC map"),
    ("avgpool-ratio-beyond-region", lambda: bra(kv_downsample_mode="avgpool",
                                                kv_downsample_ratio=8)(nhwc()), V,
     "kv_downsample_ratio=8 is larger than the 4x4-token regions of this 8x8 map"),
    ("maxpool-ratio-beyond-region", lambda: bra(kv_downsample_mode="maxpool",
                                                kv_downsample_ratio=5)(nhwc()), V,
     "is larger than the 4x4-token regions"),
    ("bra2d-nhwc-input", lambda: bra2d()(nhwc()), V, "input looks NHWC: permute it to NCHW"),
    ("bra2d-empty-map", lambda: bra2d()(nchw(h=0, w=5)), V, "got an empty NCHW map"),
    ("bra2d-no-auto-pad", lambda: bra2d(auto_pad=False)(nchw(h=5, w=5)), V,
     "input size (5, 5) is not a multiple of n_win=2 and auto_pad=False"),
    ("attention-empty-map", lambda: Attention(32, 4)(nhwc(h=0)), V, "got an empty NHWC map"),
    ("attention-3d", lambda: Attention(32, 4)(nhwc()[0]), V, "expects a 4-D NHWC tensor"),
    ("lepe-channels", lambda: AttentionLePE(32, 4)(nhwc(c=8)), V, "built for dim=32 channels"),
    ("lepe2d-nhwc-input", lambda: AttentionLePE2d(32, 4)(nhwc(h=3, w=3)), V, "looks NHWC"),
    ("lepe2d-empty-map", lambda: AttentionLePE2d(32, 4)(nchw(w=0)), V, "got an empty NCHW map"),
]
ROWS = CONSTRUCTION + FORWARD


def _param(row):
    """A table row (``name, call, exc, phrase``), or a ``pytest.param`` of one with marks."""
    if hasattr(row, "marks"):
        name, *rest = row.values
        return pytest.param(*rest, id=name, marks=row.marks)
    return pytest.param(*row[1:], id=row[0])


@pytest.mark.parametrize("call,exc,phrase", [_param(r) for r in ROWS])
def test_bad_input_gives_one_clear_line(call, exc, phrase):
    raises_one_line(call, exc, phrase)


def test_empty_batch_returns_empty():
    layer = BiLevelRoutingAttention(16, num_heads=2, n_win=2, topk=2)
    assert layer(torch.randn(0, 4, 4, 16)).shape == (0, 4, 4, 16)
    out, weights, index, _ = layer(torch.randn(0, 4, 4, 16), return_attention=True)
    assert out.shape == (0, 4, 4, 16) and weights.shape == index.shape == (0, 4, 2)
    assert BRA2d(16, num_heads=2, n_win=2)(torch.randn(0, 16, 5, 5)).shape == (0, 16, 5, 5)
    assert Attention(16, num_heads=2)(torch.randn(0, 4, 4, 16)).shape == (0, 4, 4, 16)
    assert AttentionLePE2d(16, num_heads=2)(torch.randn(0, 16, 4, 4)).shape == (0, 16, 4, 4)


def test_maps_smaller_than_n_win_clamp_topk():
    layer = BRA2d(16, num_heads=2, n_win=7, topk=8)
    x = torch.randn(1, 16, 2, 3)  # 2x3 one-token regions: topk clamped to 6
    assert layer(x).shape == x.shape


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
