"""Routing capture (hooks), the token attention it recomputes, and the routing pictures' pixels."""

from __future__ import annotations

import re

import numpy as np
import pytest
import timm
import torch
from PIL import Image

import biformer  # noqa: F401  (registers the models)
from biformer.cli import main as cli_main
from biformer.layers import BiLevelRoutingAttention, BRA2d
from biformer.ops import region_mean, topk_routing
from biformer.viz import (
    QUERY_COLOR,
    ROUTED_COLOR,
    capture_routing,
    draw_panel,
    query_attention,
    routing_hooks,
)
from biformer.viz.routing import routing_picture

SMALL = dict(depths=(1, 1, 2, 1), auto_pad=True)
ZOOM, LINE = 2, 2
REGION_PX = 32  # at 224 px with n_win=7 every stage's region covers 32 x 32 image pixels


def _photo(size: int = 224) -> np.ndarray:
    from biformer.viz.routing import builtin_image, prepare_image

    return prepare_image(builtin_image("astronaut"), size)


def _border_mask(region: int, shape: tuple[int, int], grid: int = 7) -> np.ndarray:
    """Expected outline of ``region`` in a panel at 224 px: 32 px regions, zoom 2, 2 px line."""
    i, j = divmod(region, grid)
    s = REGION_PX * ZOOM
    top, left = i * s, j * s
    mask = np.zeros(shape, dtype=bool)
    mask[top : top + s, left : left + s] = True
    mask[top + LINE : top + s - LINE, left + LINE : left + s - LINE] = False
    return mask


def _check_panel(panel: np.ndarray, query_region: int, routed: list[int]) -> None:
    """Cyan exactly on the routed regions' outlines; magenta on the query's and inside it."""
    shape = panel.shape[:2]
    cyan = (panel == ROUTED_COLOR).all(-1)
    magenta = (panel == QUERY_COLOR).all(-1)
    expected = np.zeros(shape, dtype=bool)
    for region in routed:
        if region != query_region:
            expected |= _border_mask(region, shape)
    assert expected.any() or routed == [query_region]
    assert np.array_equal(cyan, expected), "routed outlines are not where the index says"
    q_border = _border_mask(query_region, shape)
    assert magenta[q_border].all()
    i, j = divmod(query_region, 7)
    s = REGION_PX * ZOOM
    q_box = np.zeros(shape, dtype=bool)
    q_box[i * s : (i + 1) * s, j * s : (j + 1) * s] = True
    assert not magenta[~q_box].any()  # the query outline and the point marker stay in its box


def test_capture_routing_records_every_bra_layer_and_removes_hooks():
    model = timm.create_model("biformer_tiny", **SMALL).eval()
    x = torch.randn(2, 3, 224, 224)
    records = capture_routing(model, x)
    assert [(r.stage, r.block) for r in records] == [(0, 0), (1, 0), (2, 0), (2, 1)]
    assert [r.topk for r in records] == [1, 4, 16, 16]
    assert [r.map_size for r in records] == [(56, 56), (28, 28), (14, 14), (14, 14)]
    assert [r.stride for r in records] == [(4.0, 4.0), (8.0, 8.0), (16.0, 16.0), (16.0, 16.0)]
    for rec in records:
        assert rec.n_win == (7, 7) and rec.image_size == (224, 224)
        assert rec.index.shape == rec.weights.shape == (2, 49, rec.topk)
        assert torch.allclose(rec.weights.sum(-1), torch.ones(2, 49), atol=1e-5)
        # the captured queries/keys reproduce the captured routing
        _, index = topk_routing(region_mean(rec.query, rec.n_win),
                                region_mean(rec.key, rec.n_win), topk=rec.topk,
                                scale=rec.scale)
        assert torch.equal(index, rec.index)
    assert not torch.equal(records[1].index[0], records[1].index[1])  # per image
    for module in model.modules():
        assert not module._forward_hooks and not module._forward_pre_hooks


def test_routing_hooks_observe_every_forward_and_need_bra():
    model = timm.create_model("biformer_tiny", **SMALL).eval()
    with routing_hooks(model) as records, torch.no_grad():
        model(torch.randn(1, 3, 96, 96))
        model(torch.randn(1, 3, 128, 128))
    assert len(records) == 8 and records[4].image_size == (128, 128)
    assert records[0].query is None  # keep_qk=False keeps only the routing
    with pytest.raises(ValueError, match="no Bi-Level Routing Attention"):
        capture_routing(torch.nn.Conv2d(3, 3, 1), torch.randn(1, 3, 8, 8))


@pytest.mark.parametrize("soft", [False, True])
def test_query_attention_matches_the_layer_attention(soft):
    layer = BiLevelRoutingAttention(64, num_heads=2, n_win=7, topk=4, auto_pad=True,
                                    side_dwconv=5, soft_routing=soft).eval()
    x = torch.randn(2, 30, 33, 64)  # padded to 35 x 35: 5 x 5 token regions
    with routing_hooks(layer, keep_qk=True) as records, torch.no_grad():
        _, weights, index, attn = layer(x, ret_attn_mask=True)
    rec = records[0]
    assert rec.region_size == (5, 5) and rec.map_size == (30, 33)
    assert torch.equal(rec.index, index) and torch.allclose(rec.weights, weights)
    for b, (ty, tx) in [(0, (0, 0)), (1, (17, 31)), (0, (29, 32)), (1, (12, 4))]:
        region = rec.region_of_token(ty, tx)
        routed, probs = query_attention(rec, (ty, tx), batch=b)
        assert routed == index[b, region].tolist()
        local = (ty % 5) * 5 + tx % 5
        expected = attn[b * 49 + region, :, local, :].mean(0)
        assert torch.allclose(probs, expected, atol=1e-6)


@pytest.mark.parametrize("mask", [False, True])
def test_query_attention_matches_bra2d(mask):
    layer = BRA2d(64, num_heads=2, n_win=7, topk=4, mask_padded_keys=mask).eval()
    x = torch.randn(2, 64, 30, 33)  # regions of 4 x 4 tokens, an 8 x 9 grid (padded 32 x 36)
    with routing_hooks(layer, keep_qk=True) as records, torch.no_grad():
        _, attn = layer(x, ret_attn_mask=True)  # B, heads, R, Lq, topk*Lk
    rec = records[0]
    assert rec.n_win == (8, 9) and rec.region_size == (4, 4)
    for b, (ty, tx) in [(0, (0, 0)), (1, (29, 32)), (0, (13, 21))]:
        region = rec.region_of_token(ty, tx)
        _, probs = query_attention(rec, (ty, tx), batch=b)
        local = (ty % 4) * 4 + tx % 4
        assert torch.allclose(probs, attn[b, :, region, local, :].mean(0), atol=1e-6)


def test_region_boxes_of_a_padded_map():
    model = timm.create_model("biformer_tiny", **SMALL).eval()
    records = capture_routing(model, torch.randn(1, 3, 200, 200), keep_qk=False)
    stage0, stage2 = records[0], records[2]
    # stage 0: 50 x 50 tokens padded to 56: 8-token regions, the last column has 2 real tokens
    assert stage0.region_size == (8, 8)
    assert stage0.region_box(6) == (0, 192, 32, 200)
    assert stage0.region_box(48) == (192, 192, 200, 200)
    # stage 2: 13 x 13 tokens (stride 200/13), padded to 14: 2-token regions
    assert stage2.map_size == (13, 13) and stage2.region_size == (2, 2)
    assert stage2.region_box(6) == (0, round(12 * 200 / 13), round(2 * 200 / 13), 200)
    assert stage0.region_of_pixel(199, 199) == 48


def test_picture_outlines_sit_on_the_routed_regions(tmp_path):
    torch.manual_seed(0)
    model = timm.create_model("biformer_tiny", **SMALL)
    pixels = _photo()
    points = [(48, 112), (176, 48)]  # region centres: regions 10 and 36
    picture, records = routing_picture(model, pixels, points, zoom=ZOOM)
    assert len(records) == 4 and len(picture.panels) == 2 * 3  # last block of 3 BRA stages
    path = tmp_path / "routing.png"
    picture.save(path)
    png = np.asarray(Image.open(path).convert("RGB"))
    width = 2 * 10 + 3 * 224 * ZOOM + 2 * 10
    height = 40 + 2 * (18 + 224 * ZOOM) + 10 + 10
    assert png.shape == (height, width, 3)
    size = 224 * ZOOM
    for place in picture.panels:
        rec = place.record
        query_region = {(48, 112): 10, (176, 48): 36}[place.point]
        panel = png[place.top : place.top + size, place.left : place.left + size]
        _check_panel(panel, query_region, rec.index[0, query_region].tolist())
        # the panel in the file is the drawn panel, pixel for pixel
        assert np.array_equal(panel, draw_panel(pixels, rec, place.point, zoom=ZOOM))
        # the heat map lights the routed regions more than the dimmed rest of the image
        inside = np.zeros((224, 224), dtype=bool)
        for r in rec.index[0, query_region].tolist():
            t, left, b, right = rec.region_box(r)
            inside[t:b, left:right] = True
        small = panel[::ZOOM, ::ZOOM].astype(float).sum(-1)
        assert small[inside].mean() > small[~inside].mean()


def test_viz_command_writes_the_picture_it_prints(tmp_path, capsys):
    out = tmp_path / "viz.png"
    code = cli_main(["viz", "--points", "48,112", "176,48", "--out", str(out)])
    assert code == 0
    text = capsys.readouterr().out
    png = np.asarray(Image.open(out).convert("RGB"))
    assert png.shape == (40 + 2 * (18 + 448) + 20, 2 * 10 + 3 * 448 + 20, 3)
    lines = re.findall(r"query \((\d+), (\d+)\) stage (\d) block \d+: region (\d+) -> routed "
                       r"\[([\d, ]+)\]", text)
    assert len(lines) == 6  # 2 points x 3 BRA stages of biformer_tiny
    for row, point in enumerate(((48, 112), (176, 48))):
        for col, stage in enumerate((0, 1, 2)):
            y, x, st, region, routed = next(
                ln for ln in lines if (int(ln[0]), int(ln[1])) == point and int(ln[2]) == stage
            )
            assert int(region) == {(48, 112): 10, (176, 48): 36}[point]
            top = 40 + row * (18 + 448 + 10) + 18
            left = 10 + col * (448 + 10)
            panel = png[top : top + 448, left : left + 448]
            _check_panel(panel, int(region), [int(r) for r in routed.split(",")])
