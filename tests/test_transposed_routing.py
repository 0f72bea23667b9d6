"""The transposed-routing builder (key region -> routing entries that chose it) vs a Python loop."""

import pytest
import torch

from biformer.ops.transposed_routing import transpose_routing


def _loop(index):
    """For every global key region, the (global query region, slot) pairs that routed to it."""
    b, r, topk = index.shape
    lists = [[] for _ in range(b * r)]
    for img in range(b):
        for q in range(r):
            for slot in range(topk):
                lists[img * r + int(index[img, q, slot])].append((img * r + q, slot))
    return lists


def _check(index):
    routing = transpose_routing(index)
    b, r, topk = index.shape
    expected = _loop(index)
    assert routing.entries.dtype == torch.int32 and routing.offsets.dtype == torch.int32
    assert routing.entries.shape == (b * r * topk,) and routing.offsets.shape == (b * r + 1,)
    assert routing.offsets[0] == 0 and routing.offsets[-1] == b * r * topk
    assert routing.counts.tolist() == [len(e) for e in expected]
    for kv in range(b * r):
        assert routing.selectors(kv) == expected[kv], kv
    # every routing entry appears exactly once
    assert sorted(routing.entries.tolist()) == list(range(b * r * topk))
    return routing


@pytest.mark.parametrize("b,r,topk", [(1, 4, 1), (2, 16, 4), (2, 49, 16), (3, 9, 9)])
def test_matches_python_loop_on_random_routings(b, r, topk):
    scores = torch.randn(b, r, r)
    index = torch.topk(scores, topk, dim=-1).indices
    _check(index)


def test_region_chosen_by_nobody_and_by_everybody():
    r = 9
    index = torch.stack([torch.tensor([0, 1 + q % 7, 1 + (q + 3) % 7]) for q in range(r)])[None]
    routing = _check(index)
    counts = routing.counts.tolist()
    assert counts[8] == 0  # never chosen: empty range
    assert counts[0] == r  # chosen by everybody
    assert routing.selectors(0) == [(q, 0) for q in range(r)]  # ascending query regions


def test_repeated_ids_and_int32_index():
    index = torch.tensor([[[2, 2], [0, 2], [1, 1]]], dtype=torch.int32)
    routing = _check(index)
    assert routing.selectors(2) == [(0, 0), (0, 1), (1, 1)]
    assert routing.selectors(1) == [(2, 0), (2, 1)]


def test_images_are_kept_apart():
    index = torch.zeros(2, 4, 1, dtype=torch.long)  # every region of both images picks region 0
    routing = _check(index)
    assert routing.selectors(0) == [(0, 0), (1, 0), (2, 0), (3, 0)]
    assert routing.selectors(4) == [(4, 0), (5, 0), (6, 0), (7, 0)]


def test_bad_index_is_rejected_with_a_clear_error():
    with pytest.raises(ValueError, match=r"\[batch, regions, topk\]"):
        transpose_routing(torch.zeros(4, 2, dtype=torch.long))
    with pytest.raises(TypeError, match="integer"):
        transpose_routing(torch.zeros(1, 4, 2))
