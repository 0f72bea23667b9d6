"""The transposed-routing builder (key region -> routing entries that chose it) vs a Python loop."""

import pytest
import torch

from biformer.ops.transposed_routing import transpose_routing


def _loop(index):
    """Per image and key region, the (query region, slot) pairs that routed to it."""
    b, r, topk = index.shape
    lists = [[[] for _ in range(r)] for _ in range(b)]
    for img in range(b):
        for q in range(r):
            for slot in range(topk):
                kr = int(index[img, q, slot])
                if 0 <= kr < r:
                    lists[img][kr].append((q, slot))
    return lists


def selectors(routing, topk, img, kr):
    """``(query region, slot)`` pairs of key region ``kr`` of image ``img`` (host side)."""
    lo, hi = int(routing.offsets[img, kr]), int(routing.offsets[img, kr + 1])
    return [divmod(int(e), topk) for e in routing.entries[img, lo:hi].tolist()]


def counts(routing):
    """``[B, R]`` number of entries that chose each key region."""
    return routing.offsets[:, 1:] - routing.offsets[:, :-1]


def _check(index):
    routing = transpose_routing(index)
    b, r, topk = index.shape
    expected = _loop(index)
    assert routing.entries.dtype == torch.int64 and routing.offsets.dtype == torch.int32
    assert routing.entries.shape == (b, r * topk) and routing.offsets.shape == (b, r + 1)
    assert counts(routing).tolist() == [[len(e) for e in per_image] for per_image in expected]
    for img in range(b):
        for kr in range(r):
            assert selectors(routing, topk, img, kr) == expected[img][kr], (img, kr)
        # every routing entry of the image appears exactly once, sorted by its key region
        assert sorted(routing.entries[img].tolist()) == list(range(r * topk))
        assert torch.equal(routing.sorted_regions[img],
                           index[img].reshape(-1)[routing.entries[img]])
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
    assert counts(routing)[0, 8] == 0  # never chosen: empty range
    assert counts(routing)[0, 0] == r  # chosen by everybody
    assert selectors(routing, 3, 0, 0) == [(q, 0) for q in range(r)]  # ascending query regions


def test_repeated_ids_and_int32_index():
    index = torch.tensor([[[2, 2], [0, 2], [1, 1]]], dtype=torch.int32)
    routing = _check(index)
    assert selectors(routing, 2, 0, 2) == [(0, 0), (0, 1), (1, 1)]
    assert selectors(routing, 2, 0, 1) == [(2, 0), (2, 1)]
    assert routing.sorted_regions.dtype == torch.int32


def test_images_are_kept_apart():
    index = torch.zeros(2, 4, 1, dtype=torch.long)  # every region of both images picks region 0
    routing = _check(index)
    assert selectors(routing, 1, 0, 0) == [(0, 0), (1, 0), (2, 0), (3, 0)]
    assert selectors(routing, 1, 1, 0) == [(0, 0), (1, 0), (2, 0), (3, 0)]


def test_ids_outside_the_regions_belong_to_no_key_region():
    """-1, R and larger ids sort outside every key region's range (no other image's either)."""
    index = torch.tensor([[[-1, 1], [4, 0], [1, 1000], [3, -5]],
                          [[0, 4], [2, 2], [-1, 3], [7, 1]]])
    routing = _check(index)
    assert counts(routing).sum(-1).tolist() == [4, 5]  # 4 and 3 of the 8 ids are out of range
