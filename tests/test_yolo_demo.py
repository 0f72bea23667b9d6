"""``biformer yolo-demo`` (its add_arguments/main): a tiny run, its table and files; bad input."""

from __future__ import annotations

import argparse
import json
import math
import sys

import pytest

from biformer.errors import CommandError
from tests.test_yolo import no_network, ultra  # noqa: F401 - fixtures


def _args(*argv: str) -> argparse.Namespace:
    from biformer.integrations.ultralytics import demo

    parser = argparse.ArgumentParser()
    demo.add_arguments(parser)
    return parser.parse_args(list(argv))


@pytest.fixture
def keep_env(monkeypatch):
    """The demo sets YOLO_OFFLINE and YOLO_CONFIG_DIR; put them back after the test."""
    monkeypatch.setenv("YOLO_OFFLINE", "1")
    monkeypatch.setenv("YOLO_CONFIG_DIR", "")


def test_demo_trains_both_models_and_prints_one_table(
    ultra, keep_env, tmp_path, capsys  # noqa: F811 - the imported fixture
):
    from biformer.integrations.ultralytics import demo

    out = tmp_path / "demo"
    args = _args("--out", str(out), "--epochs", "1", "--imgsz", "64", "--batch", "8",
                 "--train-images", "16", "--val-images", "8")
    assert demo.main(args) == 0
    printed = capsys.readouterr().out
    assert "| model | params | GFLOPs@640" in printed
    assert "| yolo11n |" in printed and "| yolo11n-bra |" in printed
    rows = json.loads((out / "summary.json").read_text())["rows"]
    base, bra = rows
    assert bra["params"] > base["params"] > 2_000_000
    assert bra["gflops_640"] > base["gflops_640"] > 6
    for row in rows:
        assert row["train_img_s"] > 0 and row["infer_img_s"] > 0
        assert all(math.isfinite(row[k]) and 0 <= row[k] <= 1 for k in ("map50", "map50_95"))
    for run in ("baseline", "bra"):
        for name in ("results.csv", "results.png", "labels.jpg", "weights/best.pt"):
            assert (out / run / name).is_file(), f"{run}/{name}"
    assert (out / "data" / "data.yaml").is_file()
    assert len(list((out / "data" / "labels" / "train").glob("*.txt"))) == 16


@pytest.mark.parametrize(("argv", "message"), [
    (["--epochs", "0"], r"--epochs must be at least 1, got 0"),
    (["--imgsz", "100"], r"--imgsz must be a multiple of 32 of at least 64, got 100"),
    (["--model", "yolo12n-bra"], r"unknown biformer YOLO model 'yolo12n-bra'; choose one of"),
])
def test_demo_bad_arguments_are_one_line_errors(keep_env, tmp_path, argv, message):
    from biformer.integrations.ultralytics import demo

    with pytest.raises(CommandError, match=message):
        demo.main(_args("--out", str(tmp_path), *argv))


def test_demo_without_ultralytics_says_how_to_install(keep_env, tmp_path, monkeypatch):
    from biformer.integrations.ultralytics import demo

    for name in [m for m in sys.modules if m == "ultralytics" or m.startswith("ultralytics.")]:
        monkeypatch.setitem(sys.modules, name, None)
    monkeypatch.setitem(sys.modules, "ultralytics", None)
    with pytest.raises(CommandError, match=r"pip install 'biformer\[yolo\]'"):
        demo.main(_args("--out", str(tmp_path)))
