"""Region helpers and top-k routing."""

import torch
import torch.nn.functional as F

from biformer import ops
from biformer.ops.regions import region_counts


def test_to_regions_round_trip_and_order():
    x = torch.arange(2 * 6 * 4 * 3, dtype=torch.float32).reshape(2, 6, 4, 3)
    r = ops.to_regions(x, (3, 2))  # regions of 2x2 tokens
    assert r.shape == (2, 6, 4, 3)
    # region 3 = row 1, column 1 -> rows 2..3, cols 2..3, raster order inside the region
    want = x[:, 2:4, 2:4].reshape(2, 4, 3)
    assert torch.equal(r[:, 3], want)
    assert torch.equal(ops.from_regions(r, (3, 2), (6, 4)), x)


def test_region_mean_matches_avg_pool():
    x = torch.randn(2, 12, 10, 5)
    got = ops.region_mean(x, (3, 2))
    want = F.avg_pool2d(x.permute(0, 3, 1, 2), (4, 5)).flatten(2).transpose(1, 2)
    torch.testing.assert_close(got, want)


def test_region_mean_excludes_padding():
    h, w = 10, 7  # padded to 12 x 8 with regions of 4 x 4
    x = torch.randn(1, h, w, 3)
    padded = F.pad(x, (0, 0, 0, 1, 0, 2))
    got = ops.region_mean(padded, (3, 2), valid=(h, w))
    want = F.avg_pool2d(x.permute(0, 3, 1, 2), 4, ceil_mode=True, count_include_pad=False)
    torch.testing.assert_close(got, want.flatten(2).transpose(1, 2))
    assert region_counts((12, 8), (h, w), (3, 2)).tolist() == [16, 12, 16, 12, 8, 6]


def test_topk_routing_matches_loop():
    q = torch.randn(2, 9, 4)
    k = torch.randn(2, 9, 4)
    weights, index = ops.topk_routing(q, k, topk=3, scale=0.5)
    for b in range(2):
        for r in range(9):
            scores = torch.tensor([float((q[b, r] * 0.5) @ k[b, s]) for s in range(9)])
            top = scores.topk(3)
            assert index[b, r].tolist() == top.indices.tolist()
            torch.testing.assert_close(weights[b, r], torch.softmax(top.values, 0))

