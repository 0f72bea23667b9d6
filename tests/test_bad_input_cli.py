"""Bad input to every sub-command: one line naming the problem, a non-zero status, no traceback.

Each row is the command line (``{tmp}``, ``{ckpt}``, ``{img}``, ``{file}`` and ``{folder}`` are
filled in by fixtures) and a stable phrase the one-line message must contain. Rows fail before
any training or benchmarking starts.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

import biformer
from biformer.checkpoint import WEIGHTS_FORMAT
from biformer.ops import dispatch

from .cli import TINY_KWARGS, assert_one_line_error, run

NO_CUDA = pytest.mark.skipif(torch.cuda.is_available(), reason="checks a CPU-only machine")

ROWS = [
    # train: values that would crash later or train on nonsense
    (["train", "--num-classes", "0"], "--num-classes must be >= 1"),
    (["train", "--num-classes", "5"], "--num-classes 5, but the data has 10 classes"),
    (["train", "--clip-grad", "-1"], "--clip-grad must be a number in (0"),
    (["train", "--model-ema-decay", "1.5"], "--model-ema-decay must be a number in (0, 1)"),
    (["train", "--scale", "1", "0.5"], "--scale 1 0.5: needs 0 < MIN <= MAX"),
    (["train", "--ratio", "0", "0"], "--ratio 0 0: needs 0 < MIN <= MAX"),
    (["train", "--smoothing", "2"], "--smoothing must be a number in [0, 1)"),
    (["train", "--lr", "inf"], "--lr must be a number in (0, inf)"),
    (["train", "--lr", "-0.1"], "--lr must be a number in (0, inf)"),
    (["train", "--img-size", "0"], "--img-size must be at least 16"),
    (["train", "--epochs", "0"], "--epochs must be >= 1"),
    (["train", "--batch-size", "0"], "--batch-size must be >= 1"),
    (["train", "--workers", "-1"], "--workers must be >= 0"),
    (["train", "--limit-train-batches", "-3"], "--limit-train-batches must be >= 1"),
    (["train", "--drop-path", "1.5"], "--drop-path must be a number in [0, 1)"),
    (["train", "--threads", "0"], "--threads must be >= 1"),
    (["train", "--aa", "bogus"], "--aa bogus: not an augmentation policy"),
    (["train", "--opt", "bogus"], "--opt bogus"),
    (["train", "--sched", "bogus"], "--sched bogus"),
    (["train", "--model", "biformer_huge"], "unknown model 'biformer_huge'"),
    (["train", "--mixup", "0.8", "--batch-size", "7"], "even --batch-size"),
    (["train", "--device", "bogus"], "--device 'bogus': not a device"),
    (["train", "--out", "{file}"], "is a file"),
    (["train", "--out", "{file}/run"], "is a file, not a folder"),
    (["train", "--resume", "{tmp}/none.pth"], "--resume"),
    (["train", "--data", "{folder}"], "has no val/ folder"),
    (["train", "--data", "{folder}", "--val-split", "1.5"],
     "a held-out fraction must be between 0 and 1"),
    (["train", "--dataset", "bogus/x", "--data", "{folder}"], "--dataset bogus/x"),
    # eval
    (["eval", "--checkpoint", "{ckpt}", "--workers", "-1"], "--workers must be >= 0"),
    (["eval", "--checkpoint", "{ckpt}", "--img-size", "0"], "--img-size must be >= 16"),
    (["eval", "--checkpoint", "{ckpt}", "--batch-size", "0"], "--batch-size must be >= 1"),
    (["eval", "--checkpoint", "{ckpt}", "--limit-batches", "0"], "--limit-batches must be >= 1"),
    (["eval", "--checkpoint", "{ckpt}", "--data", "{folder}", "--split", "bogus"],
     "has no bogus/ folder"),
    (["eval", "--checkpoint", "{ckpt}", "--data", "{folder}"], "differ from the model's classes"),
    (["eval", "--checkpoint", "{ckpt}", "--data", "{emptyclass}"], "has no images"),
    (["eval", "--checkpoint", "{ckpt}", "--num-classes", "5"], "classifier has 10 classes"),
    (["eval", "--checkpoint", "{ckpt}", "--model", "biformer_small"],
     "holds a biformer_tiny, not a biformer_small"),
    (["eval", "--checkpoint", "{tmp}/none.pth"], "checkpoint file not found"),
    (["eval", "--checkpoint", "{file}"], "corrupt or truncated"),
    # predict
    (["predict", "{img}", "--checkpoint", "{ckpt}", "--device", "bogus"], "--device 'bogus'"),
    (["predict", "{img}", "--checkpoint", "{ckpt}", "--topk", "0"], "--topk must be >= 1"),
    (["predict", "{tmp}/none.png", "--checkpoint", "{ckpt}"], "none.png: no such file"),
    (["predict", "{file}", "--checkpoint", "{ckpt}"], "is not a readable image"),
    # viz, plot, export, convert, bench, info
    (["viz", "--n-win", "1000", "--out", "{tmp}/r.png"], "--n-win 1000: use 1 to 56"),
    (["viz", "--out", "{tmp}/r.jpg"], "must end with .png"),
    (["viz", "--image", "{tmp}/none.png", "--out", "{tmp}/r.png"], "image file not found"),
    (["plot", "{tmp}/none"], "run directory not found"),
    (["export", "--opset", "5", "--out", "{tmp}/m.onnx"], "--opset 5: use 13 to 20"),
    (["export", "--size", "16", "--out", "{tmp}/m.onnx"], "--size must be at least 48"),
    (["export", "--out", "{tmp}/m.txt"], "must end with .onnx"),
    (["convert", "{tmp}/none.pth", "--out", "{tmp}/hub"], "checkpoint file not found"),
    (["convert", "{official}", "--out", "{tmp}/hub"], "does not say which model"),
    (["bench", "--models", "bogus"], "unknown model(s) bogus"),
    (["bench", "--suite", "op", "--plot", "{file}/charts"], "is a file, not a folder"),
    (["bench", "--batch", "0"], "--batch must be >= 1"),
    (["info", "--models", "bogus"], "unknown model"),
]
CUDA_ROWS = [
    (["predict", "{img}", "--checkpoint", "{ckpt}", "--device", "cuda"], "no CUDA device"),
    (["eval", "--checkpoint", "{ckpt}", "--device", "cuda"], "no CUDA device"),
    (["train", "--device", "cuda"], "no CUDA device"),
]


def _png(path, seed: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 255, (32, 32, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)


@pytest.fixture(scope="module")
def places(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("bad_cli")
    model = biformer.checkpoint.create_model(
        "biformer_tiny", num_classes=10, **biformer.checkpoint.parse_model_kwargs(TINY_KWARGS))
    torch.save({"format": WEIGHTS_FORMAT, "model_name": "biformer_tiny",
                "model_kwargs": biformer.checkpoint.parse_model_kwargs(TINY_KWARGS),
                "num_classes": 10, "class_names": [str(i) for i in range(10)],
                "data_config": {"input_size": [3, 32, 32], "mean": [0.5] * 3,
                                "std": [0.5] * 3, "interpolation": "bicubic", "crop_pct": 1.0},
                "dataset": "digits", "model": model.state_dict()}, tmp / "tiny.pth")
    torch.save({"model": model.state_dict()}, tmp / "official.pth")
    (tmp / "junk.bin").write_bytes(b"not a checkpoint, not an image")
    for cls in ("cat", "dog"):
        _png(tmp / "data" / "train" / cls / "0.png", 0)
    (tmp / "emptyclass" / "0").mkdir(parents=True)
    for cls in range(1, 10):
        _png(tmp / "emptyclass" / str(cls) / "0.png", cls)
    _png(tmp / "digit.png", 3)
    return {"tmp": str(tmp), "ckpt": str(tmp / "tiny.pth"), "official": str(tmp / "official.pth"),
            "file": str(tmp / "junk.bin"), "folder": str(tmp / "data"), "img": str(tmp / "digit.png"),
            "emptyclass": str(tmp / "emptyclass")}


def _fill(argv: list[str], places: dict[str, str]) -> list[str]:
    return [a.format(**places) for a in argv]


@pytest.mark.parametrize("argv,phrase", ROWS, ids=[" ".join(r[0][:3]) for r in ROWS])
def test_bad_input_gives_one_line(argv, phrase, places, capsys, tmp_path):
    args = _fill(argv, places)
    if args[0] == "train" and "--out" not in args:
        args += ["--out", str(tmp_path / "run")]
    rc, _, err = run(capsys, *args)
    assert_one_line_error(rc, err, phrase)


@NO_CUDA
@pytest.mark.parametrize("argv,phrase", CUDA_ROWS, ids=[r[0][0] for r in CUDA_ROWS])
def test_asking_for_a_missing_gpu_gives_one_line(argv, phrase, places, capsys, tmp_path):
    rc, _, err = run(capsys, *_fill(argv, places), *(
        ["--out", str(tmp_path / "run")] if argv[0] == "train" else []))
    assert_one_line_error(rc, err, phrase)


def test_a_forced_backend_that_cannot_run_gives_one_line(capsys, tmp_path):
    saved = dispatch._default[0]
    dispatch._default[0] = "flex"  # what BIFORMER_BACKEND=flex does at import
    try:
        rc, _, err = run(capsys, "train", "--out", str(tmp_path), "--model-kwargs",
                         *TINY_KWARGS, "--epochs", "1", "--limit-train-batches", "1",
                         "--no-tensorboard")
    finally:
        dispatch._default[0] = saved
    assert_one_line_error(rc, err, "backend 'flex'", "no CPU backward")


def test_main_takes_its_arguments_and_leaves_sys_argv_alone(capsys, monkeypatch):
    import sys

    from biformer.cli import build_parser

    monkeypatch.setattr(sys, "argv", ["biformer", "train", "--epochs", "x"])
    parser = build_parser("info")  # what sys.argv says does not matter
    assert parser.parse_args(["info", "--json"]).json is True
    rc, out, _ = run(capsys, "info", "--models", "biformer_tiny", "--json")
    assert rc == 0 and '"biformer_tiny"' in out
    assert sys.argv == ["biformer", "train", "--epochs", "x"]


@pytest.mark.parametrize("value", ["inf", "nan", "-1", "lots"])
def test_a_bad_tile_budget_gives_one_line(value, capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("BIFORMER_CHUNK_MB", value)
    rc, _, err = run(capsys, "train", "--out", str(tmp_path), "--model-kwargs", *TINY_KWARGS,
                     "--epochs", "1", "--limit-train-batches", "1", "--no-tensorboard",
                     "--model-kwargs", "n_win=2,2,2,1", "topks=4,2,2,-2")
    assert_one_line_error(rc, err, "BIFORMER_CHUNK_MB must be a finite number of MiB")
