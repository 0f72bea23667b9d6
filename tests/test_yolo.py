"""BRA in ultralytics YOLO: registration, the shipped YAMLs at two scales, bad input (CPU).

ultralytics runs offline here: ``YOLO_OFFLINE=1`` and a temporary settings folder are set before
it is imported, its label font is provided locally, and every test fails if anything tries to
open a network connection.
"""

from __future__ import annotations

import socket
import sys
from contextlib import contextmanager
from unittest import mock

import pytest
import torch

from biformer.integrations.ultralytics import offline


@contextmanager
def refusing_network():
    """Within the block, resolving a host or connecting fails; raises after it if one was tried."""
    attempts = []

    def refuse(*args, **kwargs):
        attempts.append(args[:2])
        raise OSError("network access in a test")

    with mock.patch.object(socket, "getaddrinfo", refuse), \
            mock.patch.object(socket.socket, "connect", refuse):
        yield
    assert not attempts, f"network access attempted: {attempts}"


@pytest.fixture(scope="module")
def ultra(tmp_path_factory):
    """ultralytics imported offline with a temporary settings folder, our names registered."""
    with pytest.MonkeyPatch.context() as env:
        env.setenv("YOLO_OFFLINE", "1")  # restored after the module; go_offline sets them
        env.setenv("YOLO_CONFIG_DIR", "")
        offline.go_offline(tmp_path_factory.mktemp("ultralytics-config"))
        with refusing_network():
            ultralytics = pytest.importorskip("ultralytics")
            from biformer.integrations.ultralytics import register

            offline.provide_font()
            register()
        yield ultralytics


@pytest.fixture(autouse=True)
def no_network():
    """Every test fails if anything tries to use the network."""
    with refusing_network():
        yield


def _build(name: str):
    from ultralytics import YOLO

    from biformer.integrations.ultralytics import model_yaml

    return YOLO(model_yaml(name)).model


def _anchors(h: int, w: int) -> int:
    return sum((h // s) * (w // s) for s in (8, 16, 32))


# (name, expected BRA layers, their channels): yolo11n P5 is 256 wide; C3k2/C2f hidden = c2 / 2.
SHIPPED = [
    ("yolo11n-bra", 1, {256}),
    ("yolo11s-bra", 1, {512}),
    ("yolo11n-c3k2-bra", 2, {64, 128}),
    ("yolo11s-c3k2-bra", 2, {128, 256}),
    ("yolov8n-bra", 1, {256}),
    ("yolov8s-bra", 1, {512}),
    ("yolov8n-c2f-bra", 3, {64, 128}),
    ("yolov8s-c2f-bra", 3, {128, 256}),
]


@pytest.mark.parametrize(("name", "n_bra", "widths"), SHIPPED)
def test_shipped_yaml_builds_and_runs_any_size(ultra, name, n_bra, widths):
    from biformer.integrations.ultralytics import bra_layers
    from biformer.integrations.ultralytics.measure import gflops, num_params

    model = _build(name).eval()
    layers = bra_layers(model)
    assert len(layers) == n_bra
    assert {m.channels for m in layers} == widths
    assert all(m.attn.num_heads == m.channels // 32 for m in layers)
    for h, w in ((640, 640), (416, 608)):  # P5 20x20 and 13x19 (padded to whole regions)
        with torch.no_grad():
            out = model(torch.rand(1, 3, h, w))[0]
        assert out.shape == (1, 84, _anchors(h, w))
        assert torch.isfinite(out).all() and out.abs().max() > 1
    params, flops = num_params(model), gflops(model, 640)
    print(f"{name}: {params:,} parameters, {flops:.2f} GFLOPs at 640")
    assert params > 2_000_000 and flops > 6


@pytest.mark.parametrize("name", ["yolo11n-bra", "yolo11s-c3k2-bra", "yolov8n-bra",
                                  "yolov8s-c2f-bra"])
def test_without_bra_layers_equals_ultralytics_own_yaml(ultra, name):
    from ultralytics.nn.tasks import DetectionModel

    from biformer.integrations.ultralytics import baseline_dict, baseline_name
    from biformer.integrations.ultralytics.measure import gflops, num_params, ultralytics_gflops

    ours = DetectionModel(baseline_dict(_build(name).yaml), verbose=False)
    theirs = DetectionModel(baseline_name(name), verbose=False)
    shapes = {k: v.shape for k, v in ours.state_dict().items()}
    assert shapes == {k: v.shape for k, v in theirs.state_dict().items()}
    assert num_params(ours) == num_params(theirs) > 2_000_000
    ours_flops = (gflops(ours, 320), ultralytics_gflops(ours, 320))  # 320: a quarter of 640's
    assert ours_flops == pytest.approx((gflops(theirs, 320), ultralytics_gflops(theirs, 320)),
                                       rel=1e-12)
    assert min(ours_flops) > 1.5
    print(f"{name} without BRA = {baseline_name(name)}: {num_params(ours):,} parameters")


def test_register_twice_is_harmless_and_unregister_restores(ultra):
    from ultralytics.nn import tasks

    from biformer.integrations.ultralytics import is_registered, register, unregister

    wrapped = tasks.parse_model
    register()
    register()
    assert tasks.parse_model is wrapped and is_registered()
    unregister()
    try:
        assert tasks.parse_model is wrapped.__biformer_original__
        assert not is_registered()
    finally:
        register()
    assert is_registered()
    assert len(_build("yolo11n-bra").model) == 25  # builds as before


def test_register_without_ultralytics_names_the_install(ultra, monkeypatch):
    from biformer.integrations.ultralytics import model_yaml, register

    for name in [m for m in sys.modules if m == "ultralytics" or m.startswith("ultralytics.")]:
        monkeypatch.setitem(sys.modules, name, None)
    with pytest.raises(ImportError, match=r"ultralytics >= 8\.3.*pip install 'biformer\[yolo\]'"):
        register()
    with pytest.raises(ImportError, match=r"pip install 'biformer\[yolo\]'"):
        model_yaml("yolo11n-bra")


def _yaml(name: str, row: int, new_row: list, **top) -> dict:
    model = _build(name)
    d = dict(model.yaml, **top)
    rows = d["backbone"] + d["head"]
    rows[row] = new_row
    n = len(d["backbone"])
    return dict(d, backbone=rows[:n], head=rows[n:])


def test_scaled_channels_that_do_not_fit_the_heads_name_layer_and_numbers(ultra):
    from ultralytics.nn.tasks import DetectionModel

    d = _yaml("yolo11n-c3k2-bra", 6, [-1, 2, "C3k2_BRA", [512, True]],
              scales={"n": [0.5, 0.3, 1024]})  # 512 * 0.3 -> 160 channels, 80 hidden
    with pytest.raises(ValueError, match=r"layer 6 \(C3k2_BRA\): 80 channels .* head_dim=32; set "
                                         r"head_dim to one of \[8, 16\]"):
        DetectionModel(d, verbose=False)
    d = _yaml("yolo11n-bra", 10, [-1, 1, "BRA", [{"head_dim": 48}]])
    with pytest.raises(ValueError, match=r"layer 10 \(BRA\), input of 256 channels: 256 "
                                         r"channels are not a multiple of head_dim=48"):
        DetectionModel(d, verbose=False)


@pytest.mark.parametrize(("args", "message"), [
    ([{"nwin": 4}], r"layer 10 \(BRA\): unknown BRA option\(s\) \['nwin'\]"),
    ([{"n_win": 2, "topk": 5}], r"layer 10 \(BRA\): topk=5 exceeds the n_win\*\*2=4 regions"),
    ([{"n_win": 0}], r"layer 10 \(BRA\): n_win must be a positive integer, got 0"),
    ([256], r"layer 10 \(BRA\): BRA takes no channel or positional arguments"),
    ([{"n_win": 4}, 1], r"layer 10 \(BRA\): the BRA options mapping must be the last"),
])
def test_bad_bra_options_are_refused_with_the_layer(ultra, args, message):
    from ultralytics.nn.tasks import DetectionModel

    with pytest.raises(ValueError, match=message):
        DetectionModel(_yaml("yolo11n-bra", 10, [-1, 1, "BRA", args]), verbose=False)


def test_missing_options_use_the_defaults(ultra):
    from ultralytics.nn.tasks import DetectionModel

    from biformer.integrations.ultralytics import BRAOptions, bra_layers

    model = DetectionModel(_yaml("yolo11n-bra", 10, [-1, 1, "BRA", []]), verbose=False)
    (layer,) = bra_layers(model)
    default = BRAOptions()
    assert (layer.attn.n_win, layer.attn.topk, layer.residual) == (default.n_win, default.topk,
                                                                   True)
    assert layer.attn.num_heads == 256 // default.head_dim


def test_residual_false_returns_the_attention_alone():
    from biformer.integrations.ultralytics import BRA, BRAOptions

    x = torch.randn(2, 64, 13, 19)
    with_res = BRA(64, BRAOptions(n_win=5, topk=4)).eval()
    alone = BRA(64, BRAOptions(n_win=5, topk=4, residual=False)).eval()
    alone.load_state_dict(with_res.state_dict())
    with torch.no_grad():
        y_res, y = with_res(x), alone(x)
    torch.testing.assert_close(y_res, x + y)
    assert y.abs().mean() > 1e-3


def test_topk_is_clamped_on_maps_smaller_than_n_win():
    from biformer.integrations.ultralytics import BRA, BRAOptions

    layer = BRA(64, BRAOptions(n_win=5, topk=16)).eval()
    seen = []
    layer.attn.routing_tap.register_forward_hook(lambda m, a, out: seen.append(out[1].shape))
    x = torch.randn(1, 64, 3, 2)  # P5 of a 96x64 image: 6 one-token regions
    with torch.no_grad():
        y = layer(x)
    assert seen == [torch.Size([1, 6, 6])]  # every region routes to all 6, not 16
    assert y.shape == x.shape and torch.isfinite(y).all() and (y - x).abs().max() > 1e-3
