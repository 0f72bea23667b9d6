"""The legacy NHWC BiLevelRoutingAttention module vs an independent dense oracle."""

import pytest
import torch

from biformer.layers import BiLevelRoutingAttention

from .oracles import legacy_bra_oracle

OPTIONS = {
    "default": dict(),
    "topk_all": dict(topk=16),
    "qk_dim": dict(qk_dim=16, num_heads=2),
    "avgpool": dict(n_win=2, topk=2, kv_downsample_mode="avgpool", kv_downsample_ratio=2),
    "maxpool": dict(n_win=2, topk=2, kv_downsample_mode="maxpool", kv_downsample_ratio=3),
    "ada_avgpool": dict(n_win=2, topk=2, kv_downsample_mode="ada_avgpool", kv_per_win=3),
    "ada_maxpool": dict(n_win=2, topk=3, kv_downsample_mode="ada_maxpool", kv_per_win=2),
    "soft": dict(soft_routing=True),
    "param_diff_soft": dict(param_routing=True, diff_routing=True, soft_routing=True),
    "qkv_only": dict(param_attention="qkv"),
    "no_lepe": dict(side_dwconv=0),
    "auto_pad": dict(auto_pad=True),
}
SIZES = {"default": [(12, 8), (16, 16)], "auto_pad": [(13, 10), (5, 3)]}


def _layer(opts, backend="reference", dtype=torch.float64, seed=0):
    torch.manual_seed(seed)
    cfg = dict(dim=16, num_heads=4, n_win=4, topk=3, side_dwconv=3) | opts
    return BiLevelRoutingAttention(**cfg, backend=backend).to(dtype)


@pytest.mark.parametrize("backend", ["reference", "chunked"])
@pytest.mark.parametrize("name", list(OPTIONS))
def test_layer_matches_dense_oracle(name, backend):
    layer = _layer(OPTIONS[name], backend)
    sizes = SIZES.get(name, [(12, 8)] if layer.n_win == 4 else [(6, 12), (12, 12)])
    for h, w in sizes:
        x = torch.randn(2, h, w, 16, dtype=torch.float64, requires_grad=True)
        out = layer(x)
        want, _, _ = legacy_bra_oracle(layer, x)
        assert out.shape == (2, h, w, 16)
        torch.testing.assert_close(out, want, rtol=1e-9, atol=1e-9)
        g = torch.randn_like(out)
        params = [x] + [p for p in layer.parameters()]
        got = torch.autograd.grad(out, params, g, allow_unused=True)
        exp = torch.autograd.grad(want, params, g, allow_unused=True)
        for a, b in zip(got, exp, strict=True):
            assert (a is None) == (b is None)
            if a is not None:
                torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-8)


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.float64, 1e-11)])
@pytest.mark.parametrize("name", list(OPTIONS))
def test_chunked_equals_reference_every_option(name, dtype, tol, monkeypatch):
    monkeypatch.setenv("BIFORMER_CHUNK_MB", "0.00005")  # many tiles
    ref = _layer(OPTIONS[name], "reference", dtype)
    chk = _layer(OPTIONS[name], "chunked", dtype)
    chk.load_state_dict(ref.state_dict())
    h, w = SIZES.get(name, [(12, 8)])[0] if ref.n_win == 4 else (6, 12)
    x = torch.randn(2, h, w, 16, dtype=dtype, requires_grad=True)
    out_r, out_c = ref(x), chk(x)
    torch.testing.assert_close(out_c, out_r, rtol=tol, atol=tol)
    g = torch.randn_like(out_r)
    gr = torch.autograd.grad(out_r, [x, *ref.parameters()], g)
    gc = torch.autograd.grad(out_c, [x, *chk.parameters()], g)
    for a, b in zip(gc, gr, strict=True):
        torch.testing.assert_close(a, b, rtol=tol * 20, atol=tol * 20)


def test_ret_attn_mask_returns_routing_and_attention():
    layer = _layer({}, "chunked")
    x = torch.randn(2, 8, 8, 16, dtype=torch.float64)
    out, weights, index, attn = layer(x, ret_attn_mask=True)
    want, w_want, i_want = legacy_bra_oracle(layer, x)
    torch.testing.assert_close(out, want)
    assert torch.equal(index, i_want)
    torch.testing.assert_close(weights, w_want)
    assert attn.shape == (2 * 16, 4, 4, 3 * 4)  # (n*p2, heads, w2, topk*w2)
    torch.testing.assert_close(attn.sum(-1), torch.ones_like(attn[..., 0]))  # probabilities
    alias = layer(x, return_attention=True)  # the truthful name of the same output
    assert all(torch.equal(a, b) for a, b in zip(alias, (out, weights, index, attn), strict=True))
    torch.testing.assert_close(attn.sum(-1), torch.ones(attn.shape[:-1], dtype=attn.dtype))


SEED_PARAMETER_NAMES = {
    "lepe.weight", "lepe.bias", "qkv.qkv.weight", "qkv.qkv.bias", "wo.weight", "wo.bias",
}


def test_parameter_names_match_the_official_module():
    assert set(_layer({}).state_dict()) == SEED_PARAMETER_NAMES
    names = set(_layer(OPTIONS["param_diff_soft"]).state_dict())
    assert names == SEED_PARAMETER_NAMES | {"router.emb.weight", "router.emb.bias"}
    assert set(_layer({"param_attention": "qkv", "side_dwconv": 0}).state_dict()) == {
        "qkv.qkv.weight", "qkv.qkv.bias"
    }
    layer = _layer({"qk_dim": 8, "num_heads": 2})
    assert layer.qkv.qkv.weight.shape == (8 + 8 + 16, 16)


def test_state_dict_round_trip_reproduces_output():
    src = _layer(OPTIONS["param_diff_soft"], seed=1)
    dst = _layer(OPTIONS["param_diff_soft"], seed=2)
    x = torch.randn(1, 8, 8, 16, dtype=torch.float64)
    assert not torch.allclose(src(x), dst(x))
    dst.load_state_dict(src.state_dict(), strict=True)
    torch.testing.assert_close(dst(x), src(x), rtol=0, atol=0)


def test_default_scale_is_the_official_qk_dim_convention():
    assert _layer({"qk_dim": 16, "num_heads": 4}).scale == pytest.approx(16**-0.5)
    assert _layer({"qk_scale": 0.25}).scale == 0.25


def test_soft_routing_gradients_reach_the_router_embedding():
    layer = _layer(OPTIONS["param_diff_soft"], "chunked")
    x = torch.randn(1, 8, 8, 16, dtype=torch.float64)
    layer(x).square().sum().backward()
    assert layer.router.emb.weight.grad is not None
    assert layer.router.emb.weight.grad.abs().sum() > 0


def test_routing_tap_hook_sees_the_routing():
    layer = _layer({})
    seen = []
    layer.routing_tap.register_forward_hook(lambda m, i, o: seen.append(o))
    x = torch.randn(1, 8, 8, 16, dtype=torch.float64)
    _, weights, index, _ = layer(x, ret_attn_mask=True)
    assert len(seen) == 1
    assert torch.equal(seen[0][1], index) and seen[0][2] == (4, 4)
