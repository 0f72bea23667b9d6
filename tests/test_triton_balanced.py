"""The balanced dK/dV kernel (fixed chunks, fp32 partials reduced in order) and routed ids
outside ``[0, R)`` (read as masked key regions), against the reference backend."""

import pytest
import torch

from biformer.ops.backends import triton as triton_backend

pytest.importorskip("triton", reason="the triton backend needs the triton package")

from .test_triton_helpers import DEVICE, assert_all_close, projection, random_index, run_both  # noqa: E402, I001

TileConfig = triton_backend.TileConfig


def _concentrated_index(b, r, topk):
    """Every query region routes region 0 in slot 0 (it receives all ``b * r`` entries of its
    images); region ``r - 1`` is routed by nobody; the other slots are random."""
    index = torch.stack([
        torch.cat([torch.zeros(1, dtype=torch.long), 1 + torch.randperm(r - 2)[:topk - 1]])
        for _ in range(b * r)
    ]).view(b, r, topk)
    assert not (index == r - 1).any() and (index == 0).sum() == b * r
    return index.to(DEVICE)


def _check(index, chunk_rows, *, n_win=4, side=2, heads=2, soft=True, key_valid=None,
           want_index=None, weight=None, direct=False):
    b, r, topk = index.shape
    h = n_win * side
    proj, (q, k, v) = projection(b, h, h, heads * 16)
    leaves = [proj]
    if soft:
        if weight is None:
            weight = torch.rand(b, r, topk, device=DEVICE)
        weight = weight.requires_grad_()
        leaves.append(weight)
    with triton_backend.use_tiles(TileConfig(chunk_rows=chunk_rows)):
        outs, grads = run_both(q, k, v, index, leaves, n_win=n_win, heads=heads, weight=weight,
                               key_valid=key_valid, want_index=want_index, direct=direct)
    assert_all_close(outs, grads, what=f"chunk_rows={chunk_rows}")
    return grads


# chunk_rows // 4 query tokens = entries per chunk: 1 (every entry its own chunk), 3 (chunks
# not aligned to regions) and 64 >= R * topk (no chunking at all)
@pytest.mark.parametrize("chunk_rows", [4, 12, 256])
def test_one_key_region_receives_every_query_region(chunk_rows):
    index = _concentrated_index(2, 16, 3)
    grads = _check(index, chunk_rows)
    dkv = grads[0][0][..., 32:].reshape(2, 4, 2, 4, 2, -1)
    assert torch.equal(dkv[:, -1, :, -1], torch.zeros_like(dkv[:, -1, :, -1]))  # nobody's
    assert dkv[:, 0, :, 0].abs().min() > 0


def test_every_slot_of_every_region_routes_one_key_region():
    """Repeated ids: region 5 receives all ``R * topk`` entries of the image (the bound the
    chunking is sized for); every other region none."""
    index = torch.full((1, 16, 3), 5, dtype=torch.long, device=DEVICE)
    _check(index, chunk_rows=8, soft=False)


def test_chunks_with_large_regions_and_key_tiles():
    """Regions of 36 tokens: several dK/dV key tiles per chunk, 2-entry chunks."""
    index = _concentrated_index(1, 4, 2)
    with triton_backend.use_tiles(TileConfig(bwd_block_n=16)):
        _check(index, chunk_rows=72, n_win=2, side=6)


def test_chunked_and_unchunked_gradients_agree_bitwise_on_balanced_routing():
    """Every region receives exactly two entries: with 2-entry chunks (a split plan) each list
    is one chunk, so the result is bit-identical to the unchunked plan."""
    index = torch.tensor([[(r + 5 * s) % 16 for s in range(2)] for r in range(16)])
    index = index.view(1, 16, 2).to(DEVICE)
    proj, (q, k, v) = projection(1, 8, 8, 32)
    grads = []
    for rows in (8, 4096):  # 2-entry chunks (split plan) / one chunk for everything
        with triton_backend.use_tiles(TileConfig(chunk_rows=rows)):
            out = triton_backend.routed_attention(q, k, v, index, None, n_win=(4, 4),
                                                  num_heads=2, scale=0.3)
            grads.append(torch.autograd.grad(out, [proj], torch.ones_like(out))[0])
    assert torch.bincount(index.view(-1), minlength=16).tolist() == [2] * 16
    assert torch.equal(grads[0], grads[1])


# ------------------------------------------------------------------------------------------------
# routed ids outside [0, R)

BAD_IDS = (-1, 16, 1000, -7, 2**31 - 1)


def _with_bad_ids(index, slot):
    b, r, _ = index.shape
    bad = index.clone()
    ids = [BAD_IDS[i % len(BAD_IDS)] for i in range(b * r)]
    bad[..., slot] = torch.tensor(ids, device=index.device).view(b, r)
    return bad


def test_out_of_range_ids_read_no_keys():
    """A slot with an id outside [0, R) is a region with no keys: the same result as the
    routing without that slot (its routing-weight gradient is zero)."""
    b, r, topk = 1, 16, 3
    index = random_index(b, r, topk).to(DEVICE)
    bad = _with_bad_ids(index, slot=topk - 1)
    weight = torch.rand(b, r, topk, device=DEVICE, requires_grad=True)
    proj, (q, k, v) = projection(b, 8, 8, 32)
    kw = dict(n_win=(4, 4), num_heads=2, scale=0.3)
    for rows in (4, 512):  # chunked and unchunked dK/dV
        with triton_backend.use_tiles(TileConfig(chunk_rows=rows)):
            got = triton_backend.routed_attention(q, k, v, bad, weight, **kw)
        want = triton_backend.routed_attention(q, k, v, index[..., :-1],
                                               weight[..., :-1], **kw)
        grad_out = torch.randn_like(want)
        g_got = torch.autograd.grad(got, [proj, weight], grad_out)
        g_want = torch.autograd.grad(want, [proj, weight], grad_out)
        assert_all_close((got, want), [(g_got[0], g_want[0])], what=f"chunk_rows={rows}")
        assert torch.equal(g_got[1][..., -1], torch.zeros_like(g_got[1][..., -1]))
        assert_all_close((g_got[1], g_want[1]), [], what="weight gradient")


def test_out_of_range_ids_match_a_fully_masked_region_of_the_reference():
    """With masked keys, an id outside [0, R) equals routing to a region that is all padding."""
    b, topk = 1, 3
    index = random_index(b, 12, topk)  # only the first 3 rows of regions; row 4 is padding
    index = torch.cat([index, random_index(b, 4, topk) % 12], dim=1).to(DEVICE)
    bad = _with_bad_ids(index, slot=1)
    padded = index.clone()
    padded[..., 1] = 15  # bottom-right region: entirely padding
    _check(bad, chunk_rows=4, key_valid=(6, 8), want_index=padded, direct=True)
