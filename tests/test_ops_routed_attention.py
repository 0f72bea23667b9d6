"""The routed-attention operator: reference and chunked backends vs a dense brute-force oracle."""

import pytest
import torch

from biformer import ops
from biformer.ops.backends import chunked
from biformer.ops.checks import check_index_values

from .oracles import dense_routed_attention

BACKENDS = ["reference", "chunked"]

# (batch, regions, q region size, kv region size, topk, heads, qk channels, v channels)
CASES = [
    (2, (4, 4), (2, 3), (2, 3), 3, 2, 8, 12),
    (1, (2, 3), (3, 2), (3, 2), 6, 4, 16, 8),  # topk == all regions
    (2, (3, 3), (4, 4), (2, 2), 2, 1, 6, 6),  # downsampled keys/values
    (1, (7, 7), (1, 1), (1, 1), 16, 2, 4, 4),  # one-token regions, stage-3-like topk
]


def _inputs(case, dtype=torch.float64, soft=False, requires_grad=True):
    b, (rh, rw), (sh, sw), (kh, kw), topk, heads, cqk, cv = case
    q = torch.randn(b, rh * sh, rw * sw, cqk, dtype=dtype)
    k = torch.randn(b, rh * kh, rw * kw, cqk, dtype=dtype)
    v = torch.randn(b, rh * kh, rw * kw, cv, dtype=dtype)
    r = rh * rw
    index = torch.stack([torch.stack([torch.randperm(r)[:topk] for _ in range(r)]) for _ in range(b)])
    weight = torch.softmax(torch.randn(b, r, topk, dtype=dtype), -1) if soft else None
    tensors = [q, k, v] + ([weight] if soft else [])
    for t in tensors:
        t.requires_grad_(requires_grad)
    return q, k, v, index, weight, (rh, rw), heads


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("soft", [False, True])
@pytest.mark.parametrize("case", CASES)
def test_backend_matches_dense_oracle(backend, soft, case):
    q, k, v, index, weight, regions, heads = _inputs(case, soft=soft)
    scale = 0.37
    out = ops.routed_attention(
        q, k, v, index, n_win=regions, num_heads=heads, scale=scale, weight=weight,
        backend=backend,
    )
    expected = dense_routed_attention(q, k, v, index, regions, heads, scale, weight)
    torch.testing.assert_close(out, expected, rtol=1e-10, atol=1e-10)
    grad_out = torch.randn_like(out)
    leaves = [t for t in (q, k, v, weight) if t is not None]
    got = torch.autograd.grad(out, leaves, grad_out)
    want = torch.autograd.grad(expected, leaves, grad_out)
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 2e-5), (torch.float64, 1e-11)])
@pytest.mark.parametrize("soft", [False, True])
@pytest.mark.parametrize("case", CASES)
def test_chunked_matches_reference_with_tiny_tiles(monkeypatch, dtype, tol, soft, case):
    """Force one query token per tile so that every tiling path runs."""
    monkeypatch.setenv("BIFORMER_CHUNK_MB", "0.000001")
    q, k, v, index, weight, regions, heads = _inputs(case, dtype=dtype, soft=soft)
    kw = dict(n_win=regions, num_heads=heads, scale=0.5, weight=weight)
    out_c = ops.routed_attention(q, k, v, index, backend="chunked", **kw)
    out_r = ops.routed_attention(q, k, v, index, backend="reference", **kw)
    torch.testing.assert_close(out_c, out_r, rtol=tol, atol=tol)
    leaves = [t for t in (q, k, v, weight) if t is not None]
    grad_out = torch.randn_like(out_r)
    for gc, gr in zip(
        torch.autograd.grad(out_c, leaves, grad_out), torch.autograd.grad(out_r, leaves, grad_out), strict=True
    ):
        torch.testing.assert_close(gc, gr, rtol=tol * 10, atol=tol * 10)


def test_tile_plan_splits_query_tokens_when_a_region_is_too_big():
    regions, tokens = chunked.plan_tiles(
        groups=64, q_tokens=6000, keys=24000, heads=4, channels=64, budget=256 * 2**20
    )
    assert regions == 1 and 0 < tokens < 6000
    regions, tokens = chunked.plan_tiles(
        groups=392, q_tokens=64, keys=64, heads=2, channels=128, budget=256 * 2**20
    )
    assert tokens == 64 and regions == 392


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("soft", [False, True])
def test_gradcheck_float64(backend, soft, monkeypatch):
    monkeypatch.setenv("BIFORMER_CHUNK_MB", "0.00001")
    q, k, v, index, weight, regions, heads = _inputs((1, (2, 2), (2, 1), (1, 2), 2, 2, 4, 4), soft=soft)

    def fn(q, k, v, *w):
        return ops.routed_attention(
            q, k, v, index, n_win=regions, num_heads=heads, scale=0.8,
            weight=w[0] if w else None, backend=backend,
        )

    inputs = (q, k, v) + ((weight,) if soft else ())
    assert torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-7)


def test_masked_padded_keys_get_no_attention():
    q, k, v, index, _, regions, heads = _inputs((1, (2, 2), (2, 2), (2, 2), 2, 1, 4, 4))
    valid = (3, 3)  # last row and column are padding
    outs = [
        ops.routed_attention(
            q, k, v, index, n_win=regions, num_heads=heads, scale=1.0, key_valid=valid,
            backend=b,
        )
        for b in BACKENDS
    ]
    torch.testing.assert_close(outs[0], outs[1])
    # changing padded keys/values must not change anything
    k2, v2 = k.detach().clone(), v.detach().clone()
    k2[:, 3:], v2[:, 3:], k2[:, :, 3:], v2[:, :, 3:] = 7.0, -5.0, 3.0, 9.0
    again = ops.routed_attention(
        q, k2, v2, index, n_win=regions, num_heads=heads, scale=1.0, key_valid=valid,
        backend="reference",
    )
    torch.testing.assert_close(again, outs[0])


def test_routed_attention_with_weights_returns_official_layout():
    q, k, v, index, _, regions, heads = _inputs((2, (2, 2), (2, 2), (2, 2), 3, 2, 4, 4))
    out, attn = ops.routed_attention_with_weights(
        q, k, v, index, n_win=regions, num_heads=heads, scale=0.5
    )
    assert attn.shape == (2 * 4, 2, 4, 3 * 4)
    torch.testing.assert_close(attn.sum(-1), torch.ones(8, 2, 4, dtype=attn.dtype))
    torch.testing.assert_close(
        out, ops.routed_attention(q, k, v, index, n_win=regions, num_heads=heads, scale=0.5)
    )


def test_bi_level_routing_attention_composes_pool_route_attend():
    x = torch.randn(2, 8, 8, 8, dtype=torch.float64)
    out, weights, index = ops.bi_level_routing_attention(
        x, x * 0.5, x, n_win=4, topk=3, num_heads=2, scale=0.3
    )
    q_r = ops.region_mean(x, (4, 4))
    _, want_idx = torch.topk((q_r * 0.3) @ (q_r * 0.5).transpose(1, 2), 3, dim=-1)
    assert torch.equal(index, want_idx)
    expected = dense_routed_attention(x, x * 0.5, x, index, (4, 4), 2, 0.3)
    torch.testing.assert_close(out, expected)
    assert weights.shape == (2, 16, 3)


def test_regions_keyword_is_a_deprecated_alias_of_n_win():
    g = torch.Generator().manual_seed(3)
    q, k, v = (torch.randn(1, 4, 4, 8, generator=g, dtype=torch.float64) for _ in range(3))
    index = torch.tensor([[[0, 1], [1, 2], [3, 0], [2, 3]]])
    kw = dict(num_heads=2, scale=0.5, backend="reference")
    want = ops.routed_attention(q, k, v, index, n_win=2, **kw)
    with pytest.warns(DeprecationWarning, match="called n_win="):
        got = ops.routed_attention(q, k, v, index, regions=2, **kw)
    assert torch.equal(got, want)
    with pytest.raises(TypeError, match="n_win= only"):
        ops.routed_attention(q, k, v, index, n_win=2, regions=2, **kw)
    with pytest.raises(TypeError, match="n_win= .* is required"):
        ops.routed_attention(q, k, v, index, **kw)


@pytest.mark.parametrize("bad", [4, -1])
@pytest.mark.parametrize("backend", BACKENDS)
def test_ids_out_of_range_never_read_another_image(backend, bad):
    """An id equal to the region count, or -1, in batch element 1 once made the chunked backend
    read element 0's (or 2's) regions. The public op refuses it; called unvalidated, every
    backend still refuses rather than read outside the image's own regions."""
    q, k, v, index, _, regions, heads = _inputs((2, (2, 2), (2, 2), (2, 2), 2, 2, 8, 8),
                                                requires_grad=False)
    index[1, 0, 0] = bad
    kw = dict(n_win=regions, num_heads=heads, scale=0.5, backend=backend)
    with pytest.raises(ValueError, match=rf"index\[1, 0, 0\]={bad} is not a region id"):
        ops.routed_attention(q, k, v, index, **kw)
    with pytest.raises((IndexError, RuntimeError), match="out of"):
        ops.routed_attention(q, k, v, index, validate=False, **kw)


def test_global_ids_send_foreign_ids_past_the_end():
    index = torch.tensor([[[0, 3]], [[4, -1]], [[2, 1]]]).expand(3, 4, 2)
    gidx = chunked.global_ids(index, 4)
    assert gidx.shape == (12, 2)
    assert gidx[:4].tolist() == [[0, 3]] * 4 and gidx[8:].tolist() == [[10, 9]] * 4
    assert (gidx[4:8] == 12).all()  # B * R: no image has it


@pytest.mark.parametrize("num_regions,topk", [(49, 16), (49, 2), (4096, 4)])  # counts, sort, sort
def test_repeated_ids_are_detected(num_regions, topk):
    g = torch.Generator().manual_seed(num_regions)
    rows = [torch.randperm(num_regions, generator=g)[:topk] for _ in range(3 * num_regions)]
    index = torch.stack(rows).view(3, num_regions, topk)
    assert check_index_values(index, num_regions) is False
    assert check_index_values(index.int(), num_regions) is False
    index[2, num_regions - 1, topk - 1] = index[2, num_regions - 1, 0]
    assert check_index_values(index, num_regions) is True
    assert check_index_values(index[:, :, :1], num_regions) is False  # one id: nothing repeats
