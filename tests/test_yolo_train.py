"""BRA YOLO through ultralytics' own API: train, val, predict, reload (also restricted), ONNX.

One short training (1 epoch, 32 synthetic digit images at 160 px) of yolo11n-bra, shared by
the tests of this file; offline and network-guarded like tests/test_yolo.py.
"""

from __future__ import annotations

import csv
import math
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from biformer.export import relative_error
from tests.test_yolo import no_network, refusing_network, ultra  # noqa: F401 - fixtures

IMGSZ = 160

RELOAD = """
import socket, sys, torch
def refuse(*a, **k):
    raise OSError("network access in a test")
socket.getaddrinfo = refuse
socket.socket.connect = refuse
if sys.argv[3] == "register":
    from biformer.integrations.ultralytics import register
    register()
from ultralytics import YOLO
from ultralytics.nn.tasks import DetectionModel
model = YOLO(sys.argv[1]).model.eval()
with torch.no_grad():
    torch.save(model(torch.load(sys.argv[2]))[0], sys.argv[2] + ".out")
DetectionModel(model.yaml, verbose=False)  # rebuilt from its YAML, as for resume or fine-tuning
print("rebuilt from yaml")
"""


@pytest.fixture(scope="module")
def trained(ultra, tmp_path_factory):  # noqa: F811 - the imported fixture
    from ultralytics import YOLO

    from biformer.integrations.ultralytics import model_yaml
    from biformer.integrations.ultralytics.data import DigitsDetection, synthesize_digits

    root = tmp_path_factory.mktemp("yolo-train")
    data = synthesize_digits(root / "data", DigitsDetection(train=32, val=16, size=IMGSZ))
    yolo = YOLO(model_yaml("yolo11n-bra"))
    with refusing_network():
        metrics = yolo.train(
            data=str(data), epochs=1, imgsz=IMGSZ, batch=8, workers=0, device="cpu", amp=False,
            pretrained=False, plots=True, project=str(root / "runs"), name="bra", exist_ok=True,
            seed=0, verbose=False,
        )
    run = Path(metrics.save_dir)
    return SimpleNamespace(yolo=yolo, metrics=metrics, data=data, root=root, run=run,
                           best=run / "weights" / "best.pt")


def test_train_writes_ultralytics_run_folder(trained):
    for name in ("results.csv", "results.png", "labels.jpg", "train_batch0.jpg",
                 "val_batch0_pred.jpg", "confusion_matrix.png", "weights/last.pt"):
        assert (trained.run / name).is_file(), name
    with open(trained.run / "results.csv") as f:
        (row,) = list(csv.DictReader(f))
    losses = [float(row[k]) for k in ("train/box_loss", "train/cls_loss", "train/dfl_loss")]
    assert all(math.isfinite(v) and v > 0.1 for v in losses)
    assert set(trained.metrics.results_dict) >= {"metrics/mAP50(B)", "metrics/mAP50-95(B)"}


def test_val_and_predict(trained, tmp_path):
    metrics = trained.yolo.val(data=str(trained.data), imgsz=IMGSZ, batch=8, plots=False,
                               project=str(tmp_path), name="val", verbose=False)
    assert all(math.isfinite(v) for v in metrics.results_dict.values())
    assert metrics.speed["inference"] > 0
    image = sorted((trained.data.parent / "images" / "val").glob("*.png"))[0]
    (result,) = trained.yolo.predict(str(image), imgsz=IMGSZ, conf=0.001, verbose=False)
    assert result.orig_shape == (IMGSZ, IMGSZ)
    boxes = result.boxes.xyxy
    assert len(boxes) > 0 and (boxes >= -1).all() and (boxes <= IMGSZ + 1).all()
    assert set(result.boxes.cls.tolist()) <= set(range(10))


def _reload(best: Path, x_file: Path, mode: str, safe: bool) -> subprocess.CompletedProcess:
    env = dict(os.environ, YOLO_OFFLINE="1")
    if safe:
        env["ULTRALYTICS_SAFE_LOAD"] = "1"
    else:
        env.pop("ULTRALYTICS_SAFE_LOAD", None)
    return subprocess.run([sys.executable, "-c", RELOAD, str(best), str(x_file), mode], env=env,
                          capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize(("mode", "safe"), [("plain", False), ("register", True)])
def test_reload_in_a_fresh_process_gives_identical_outputs(trained, tmp_path, mode, safe):
    """Plain loading needs nothing; restricted loading accepts our classes after register()."""
    from ultralytics import YOLO

    x = torch.rand(1, 3, IMGSZ, IMGSZ, generator=torch.Generator().manual_seed(3))
    x_file = tmp_path / "x.pt"
    torch.save(x, x_file)
    done = _reload(trained.best, x_file, mode, safe)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "rebuilt from yaml" in done.stdout
    with torch.no_grad():
        ours = YOLO(str(trained.best)).model.eval()(x)[0]
    theirs = torch.load(tmp_path / "x.pt.out")
    assert ours.abs().max() > 1
    assert relative_error(theirs, ours) < 1e-6


def test_restricted_loading_without_register_refuses_our_classes(trained, tmp_path):
    x_file = tmp_path / "x.pt"
    torch.save(torch.rand(1, 3, IMGSZ, IMGSZ), x_file)
    done = _reload(trained.best, x_file, "plain", safe=True)
    assert done.returncode != 0
    assert "references types outside the supported" in done.stderr


def test_onnx_export_matches_pytorch(trained):
    import onnx
    from ultralytics import YOLO

    from biformer.integrations.ultralytics.exporting import export_onnx

    yolo = YOLO(str(trained.best))
    with refusing_network():
        check = export_onnx(yolo, IMGSZ)
    assert check.path.is_file() and check.path.suffix == ".onnx"
    ops = {node.op_type for node in onnx.load(str(check.path)).graph.node}
    assert {"TopK", "GatherElements"} <= ops or {"TopK", "Gather"} <= ops  # BRA's routing
    print(f"onnxruntime vs PyTorch: max relative error {check.max_relative_error:.2e}")
    assert 0 <= check.max_relative_error < 1e-4
