"""BRA2d (reference NCHW semantics) vs an independent dense oracle, any input size."""

import pytest
import torch

from biformer.layers import BRA2d
from biformer.layers.bra2d import region_layout

from .oracles import nchw_bra_oracle


@pytest.mark.parametrize("backend", ["reference", "chunked"])
@pytest.mark.parametrize("size", [(14, 14), (15, 11), (9, 20), (4, 5), (1, 1)])
def test_bra2d_matches_dense_oracle(backend, size):
    torch.manual_seed(0)
    layer = BRA2d(16, num_heads=2, n_win=7 if size[0] >= 7 else 3, topk=4, side_dwconv=5,
                  backend=backend).double()
    x = torch.randn(2, 16, *size, dtype=torch.float64, requires_grad=True)
    out = layer(x)
    want, _ = nchw_bra_oracle(layer, x)
    assert out.shape == x.shape
    torch.testing.assert_close(out, want, rtol=1e-9, atol=1e-9)
    g = torch.randn_like(out)
    params = [x, *layer.parameters()]
    for a, b in zip(torch.autograd.grad(out, params, g), torch.autograd.grad(want, params, g), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-8)


def test_region_layout_follows_the_reference():
    assert region_layout((56, 56), 7) == ((8, 8), (7, 7))
    assert region_layout((600, 500), 7) == ((85, 71), (8, 8))  # 600 = 7*85 + 5: an 8th row
    assert region_layout((3, 30), 7) == ((1, 4), (3, 8))


def test_parameter_names_match_the_official_nchw_module():
    names = set(BRA2d(16, num_heads=2).state_dict())
    assert names == {
        "lepe.weight", "lepe.bias", "qkv_linear.weight", "qkv_linear.bias",
        "output_linear.weight", "output_linear.bias",
    }


def test_ret_attn_mask_layout():
    layer = BRA2d(16, num_heads=2, n_win=2, topk=2).double()
    x = torch.randn(1, 16, 6, 6, dtype=torch.float64)
    out, attn = layer(x, ret_attn_mask=True)
    assert attn.shape == (1, 2, 4, 9, 2 * 9)  # (B, heads, regions, Lq, topk*Lk)
    torch.testing.assert_close(out, layer(x))
    out2, attn2 = layer(x, return_attention=True)
    assert torch.equal(out2, out) and torch.equal(attn2, attn)


def test_mask_padded_keys_changes_only_padded_inputs():
    torch.manual_seed(0)
    plain = BRA2d(16, num_heads=2, n_win=3, topk=2).double()
    masked = BRA2d(16, num_heads=2, n_win=3, topk=2, mask_padded_keys=True).double()
    masked.load_state_dict(plain.state_dict())
    x = torch.randn(1, 16, 9, 9, dtype=torch.float64)  # no padding: identical
    torch.testing.assert_close(plain(x), masked(x))
    x = torch.randn(1, 16, 10, 11, dtype=torch.float64)  # padded: differs
    assert not torch.allclose(plain(x), masked(x))


def test_auto_pad_false_requires_multiples():
    layer = BRA2d(16, num_heads=2, n_win=4, auto_pad=False)
    layer(torch.randn(1, 16, 8, 8))
    with pytest.raises(ValueError, match="not a multiple of n_win=4 and auto_pad=False"):
        layer(torch.randn(1, 16, 9, 8))
