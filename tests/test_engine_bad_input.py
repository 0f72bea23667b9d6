"""Bad input to train/eval/predict: one clear line on stderr and exit status 2, no traceback."""

from __future__ import annotations

import json

import numpy as np
import pytest
import timm
import torch
from PIL import Image

import biformer  # noqa: F401  (registers the models)

from .cli import TINY_KWARGS, assert_one_line_error, cli, run

DEMO_KWARGS = TINY_KWARGS


def _png(path, seed: int, size: int = 20) -> None:
    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(path)


# ---- train: data directories ------------------------------------------------------------------


def test_missing_data_directory(capsys, tmp_path):
    rc, _, err = run(capsys, "train", "--data", str(tmp_path / "nope"), "--out", str(tmp_path))
    assert_one_line_error(rc, err, "--data", "no such directory")


def test_empty_data_directory(capsys, tmp_path):
    (tmp_path / "data").mkdir()
    rc, _, err = run(capsys, "train", "--data", str(tmp_path / "data"), "--out", str(tmp_path))
    assert_one_line_error(rc, err, "is empty", "train/<class>/<image>")


def test_data_directory_without_split_folders(capsys, tmp_path):
    _png(tmp_path / "data" / "cat" / "a.png", 0)
    rc, _, err = run(capsys, "train", "--data", str(tmp_path / "data"), "--out", str(tmp_path))
    assert_one_line_error(rc, err, "has no train/ folder")


def test_split_without_class_folders(capsys, tmp_path):
    for i in range(3):
        _png(tmp_path / "data" / "train" / f"{i}.png", i)
    rc, _, err = run(capsys, "train", "--data", str(tmp_path / "data"), "--out", str(tmp_path))
    assert_one_line_error(rc, err, "3 image(s) but no class folders", "<class>/<image>")


def test_class_folders_without_images(capsys, tmp_path):
    for c in ("cat", "dog"):
        (tmp_path / "data" / "train" / c).mkdir(parents=True)
        (tmp_path / "data" / "train" / c / "notes.txt").write_text("not an image")
    rc, _, err = run(capsys, "train", "--data", str(tmp_path / "data"), "--out", str(tmp_path))
    assert_one_line_error(rc, err, "no images")


def test_corrupt_images_are_skipped_and_counted(capsys, tmp_path):
    data = tmp_path / "data"
    for split in ("train", "val"):
        for c, cls in enumerate(("cat", "dog")):
            for i in range(4):
                _png(data / split / cls / f"{i}.png", 10 * c + i)
    (data / "train" / "cat" / "broken.jpg").write_bytes(b"\xff\xd8 definitely not a jpeg")
    (data / "val" / "dog" / "truncated.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 20)
    rc, out, err = run(
        capsys, "train", "--data", str(data), "--out", str(tmp_path / "run"),
        "--model", "biformer_tiny", "--model-kwargs", *DEMO_KWARGS, "--img-size", "32",
        "--batch-size", "4", "--epochs", "1", "--workers", "0", "--threads", "1",
        "--no-tensorboard",
    )
    assert rc == 0, err
    assert "broken.jpg" in err and "warning: unreadable image skipped" in err
    assert "Traceback" not in err
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["num_classes"] == 2
    with open(tmp_path / "run" / "metrics.csv") as f:
        header, row = f.read().splitlines()[:2]
    skipped = int(dict(zip(header.split(","), row.split(","), strict=True))["skipped_images"])
    assert skipped >= 2  # the training image (at least once) and the validation image
    assert "skipped" in out  # counted on the epoch line


def test_odd_batch_with_mixup(capsys, tmp_path):
    rc, _, err = run(capsys, "train", "--out", str(tmp_path), "--mixup", "0.8", "--batch-size",
                     "7")
    assert_one_line_error(rc, err, "even --batch-size")


def test_model_that_rejects_the_input_size(capsys, tmp_path):
    rc, _, err = run(capsys, "train", "--out", str(tmp_path), "--model-kwargs", "n_win=3",
                     "auto_pad=False", "--epochs", "1", "--limit-train-batches", "1")
    assert_one_line_error(rc, err, "cannot take (64, 3, 32, 32) inputs", "n_win")


# ---- checkpoints --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def resnet_weights(tmp_path_factory):
    path = tmp_path_factory.mktemp("ckpt") / "resnet.pth"
    torch.save({"state_dict": timm.create_model("resnet10t", num_classes=10).state_dict()}, path)
    return path


def test_checkpoint_of_another_model(capsys, resnet_weights, tmp_path):
    rc, _, err = run(capsys, "eval", "--model", "biformer_tiny", "--checkpoint",
                     str(resnet_weights), "--data", str(tmp_path))
    assert_one_line_error(rc, err, "does not fit biformer_tiny", "not look like a BiFormer")


def test_checkpoint_of_another_biformer(capsys, tmp_path):
    small = timm.create_model("biformer_tiny", dims=(16, 32, 64, 64), depths=(1, 1, 1, 1),
                              head_dim=16)
    torch.save({"model": small.state_dict()}, tmp_path / "w.pth")
    rc, _, err = run(capsys, "predict", str(tmp_path / "w.pth"), "--model", "biformer_tiny",
                     "--checkpoint", str(tmp_path / "w.pth"))
    # the image argument is checked first: a .pth is not an image
    assert_one_line_error(rc, err, "w.pth is not a readable image")
    _png(tmp_path / "x.png", 1)
    rc, _, err = run(capsys, "predict", str(tmp_path / "x.png"), "--model", "biformer_tiny",
                     "--checkpoint", str(tmp_path / "w.pth"))
    assert_one_line_error(rc, err, "does not fit biformer_tiny", "depths (1, 1, 1, 1)")


def test_our_checkpoint_with_another_model_name(capsys, tmp_path):
    rc = cli(["train", "--out", str(tmp_path), "--model-kwargs", "dims=16,32,64,64",
                   "depths=1,1,1,1", "--epochs", "1", "--limit-train-batches", "1",
                   "--limit-val-batches", "1", "--no-tensorboard"])
    assert rc == 0
    capsys.readouterr()
    rc, _, err = run(capsys, "eval", "--model", "biformer_small", "--checkpoint",
                     str(tmp_path / "best.pth"))
    assert_one_line_error(rc, err, "holds a biformer_tiny, not a biformer_small")
    rc, _, err = run(capsys, "train", "--out", str(tmp_path), "--model", "biformer_small")
    assert_one_line_error(rc, err, "was trained as biformer_tiny", "--no-resume")


def test_missing_and_corrupt_checkpoint_files(capsys, tmp_path):
    rc, _, err = run(capsys, "eval", "--model", "biformer_tiny", "--checkpoint",
                     str(tmp_path / "missing.pth"), "--data", str(tmp_path))
    assert_one_line_error(rc, err, "missing.pth", "not found")
    (tmp_path / "junk.pth").write_bytes(b"this is not a checkpoint at all")
    rc, _, err = run(capsys, "eval", "--model", "biformer_tiny", "--checkpoint",
                     str(tmp_path / "junk.pth"), "--data", str(tmp_path))
    assert_one_line_error(rc, err, "junk.pth", "not a PyTorch checkpoint")


def test_resume_from_a_weights_file(capsys, resnet_weights, tmp_path):
    rc, _, err = run(capsys, "train", "--out", str(tmp_path), "--resume", str(resnet_weights))
    assert_one_line_error(rc, err, "not a training checkpoint", "--finetune")
    rc, _, err = run(capsys, "train", "--out", str(tmp_path), "--resume",
                     str(tmp_path / "none.pth"))
    assert_one_line_error(rc, err, "--resume", "no such file")


def test_finetune_from_another_model(capsys, resnet_weights, tmp_path):
    rc, _, err = run(capsys, "train", "--out", str(tmp_path), "--finetune", str(resnet_weights))
    assert_one_line_error(rc, err, "--finetune", "does not fit")


# ---- eval / predict -----------------------------------------------------------------------------


def test_eval_folder_with_other_classes(capsys, tmp_path):
    model = timm.create_model("biformer_tiny", dims=(16, 32, 64, 64), depths=(1, 1, 1, 1),
                              head_dim=16)
    torch.save(model.state_dict(), tmp_path / "w.pth")
    for c in ("a", "b", "c"):
        _png(tmp_path / "data" / "val" / c / "0.png", 0)
    rc, _, err = run(capsys, "eval", "--model", "biformer_tiny", "--model-kwargs",
                     "dims=16,32,64,64", "depths=1,1,1,1", "head_dim=16", "--checkpoint",
                     str(tmp_path / "w.pth"), "--data", str(tmp_path / "data"))
    assert_one_line_error(rc, err, "3 class folders but the model has 1000 classes")


def test_eval_needs_data_for_imagenet_models(capsys, resnet_weights):
    rc, _, err = run(capsys, "eval", "--model", "biformer_tiny", "--checkpoint",
                     str(resnet_weights))
    assert rc == 2 and "Traceback" not in err


def test_predict_bad_images(capsys, tmp_path):
    rc, _, err = run(capsys, "predict", str(tmp_path / "missing.jpg"))
    assert_one_line_error(rc, err, "missing.jpg: no such file")
    (tmp_path / "bad.jpg").write_bytes(b"GIF89a but truncated")
    rc, _, err = run(capsys, "predict", str(tmp_path / "bad.jpg"))
    assert_one_line_error(rc, err, "bad.jpg is not a readable image")


def test_unknown_model(capsys, tmp_path):
    rc, _, err = run(capsys, "train", "--out", str(tmp_path), "--model", "biformer_huge")
    assert_one_line_error(rc, err, "unknown model", "biformer_small")


def test_resume_with_another_architecture(capsys, tmp_path):
    base = ["train", "--out", str(tmp_path), "--epochs", "2", "--limit-train-batches", "1",
            "--limit-val-batches", "1", "--no-tensorboard"]
    assert cli([*base, "--model-kwargs", "dims=16,32,64,64", "depths=1,1,1,1",
                     "--epochs", "1"]) == 0
    capsys.readouterr()
    rc, _, err = run(capsys, *base, "--model-kwargs", "dims=16,32,64,96", "depths=1,1,1,1")
    assert_one_line_error(rc, err, "cannot resume", "--model-kwargs", "--no-resume")
