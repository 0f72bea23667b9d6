"""Global attention layers (stage 4) vs explicit matmul attention."""

import torch

from biformer.layers import Attention, AttentionLePE, AttentionLePE2d


def _explicit(x_tokens, qkv_w, heads, scale):
    b, n, c = x_tokens.shape
    q, k, v = (x_tokens @ qkv_w.t()).reshape(b, n, 3, heads, c // heads).permute(2, 0, 3, 1, 4)
    attn = torch.softmax((q @ k.transpose(-1, -2)) * scale, -1)
    return (attn @ v).transpose(1, 2).reshape(b, n, c)


def test_attention_lepe_uses_the_input_for_lepe():
    layer = AttentionLePE(32, num_heads=4, side_dwconv=5).double()
    x = torch.randn(2, 5, 6, 32, dtype=torch.float64)
    tokens = _explicit(x.reshape(2, 30, 32), layer.qkv.weight, 4, 8**-0.5).reshape(2, 5, 6, 32)
    lepe = layer.lepe(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
    torch.testing.assert_close(layer(x), layer.proj(tokens + lepe))
    assert set(layer.state_dict()) == {
        "qkv.weight", "proj.weight", "proj.bias", "lepe.weight", "lepe.bias"
    }


def test_plain_attention():
    layer = Attention(16, num_heads=2).double()
    x = torch.randn(1, 3, 4, 16, dtype=torch.float64)
    want = layer.proj(_explicit(x.reshape(1, 12, 16), layer.qkv.weight, 2, 8**-0.5))
    torch.testing.assert_close(layer(x), want.reshape(1, 3, 4, 16))


def test_attention_lepe_2d_uses_the_values_for_lepe():
    layer = AttentionLePE2d(32, num_heads=4).double()
    x = torch.randn(2, 32, 5, 6, dtype=torch.float64)
    qkv = layer.qkv(x)
    q, k, v = qkv.chunk(3, 1)
    b, c, h, w = x.shape
    qh = q.reshape(b, 4, 8, h * w).transpose(-1, -2)
    kh = k.reshape(b, 4, 8, h * w)
    vh = v.reshape(b, 4, 8, h * w).transpose(-1, -2)
    out = torch.softmax((qh @ kh) * 8**-0.5, -1) @ vh  # B, m, HW, d
    out = out.permute(0, 1, 3, 2).reshape(b, c, h, w) + layer.lepe(v)
    torch.testing.assert_close(layer(x), layer.proj(out))
