"""One clear message per mistake: viz, plot and export commands, detection and viz APIs."""

from __future__ import annotations

import numpy as np
import pytest
import timm
import torch

import biformer  # noqa: F401  (registers the models)
from biformer.checkpoint import check_model_name
from biformer.cli import main as cli_main
from biformer.detection import biformer_fpn_backbone
from biformer.viz import capture_routing, draw_panel


def _fails(argv: list[str], capsys) -> str:
    """Run the command; it must exit 2 with one ``biformer CMD: error: ...`` line."""
    assert cli_main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert err.startswith(f"biformer {argv[0]}: error: "), err
    return err


def test_viz_missing_image(tmp_path, capsys):
    err = _fails(["viz", "--image", str(tmp_path / "nope.jpg"), "--out",
                  str(tmp_path / "o.png")], capsys)
    assert "image file not found" in err and "nope.jpg" in err
    assert not (tmp_path / "o.png").exists()


def test_viz_not_an_image(tmp_path, capsys):
    fake = tmp_path / "notes.png"
    fake.write_text("these are words, not pixels")
    err = _fails(["viz", "--image", str(fake), "--out", str(tmp_path / "o.png")], capsys)
    assert "not an image" in err and "notes.png" in err


def test_unknown_model_suggests_close_names(tmp_path, capsys):
    err = _fails(["viz", "--model", "biformer_tinny", "--out", str(tmp_path / "o.png")], capsys)
    assert "unknown model 'biformer_tinny'" in err and "biformer_tiny" in err
    err = _fails(["export", "--model", "biformer_smal", "--out", str(tmp_path / "m.onnx")],
                 capsys)
    assert "did you mean" in err and "biformer_small" in err
    with pytest.raises(ValueError, match="not a BiFormer model 'resnet18'"):
        check_model_name("resnet18")


def test_unwritable_output_path(tmp_path, capsys):
    blocker = tmp_path / "file.txt"
    blocker.write_text("a file where a folder should be")
    err = _fails(["viz", "--out", str(blocker / "o.png")], capsys)
    assert "is a file, not a folder" in err and "o.png" in err
    err = _fails(["export", "--out", str(blocker / "m.onnx")], capsys)
    assert "is a file, not a folder" in err
    err = _fails(["plot", str(tmp_path), "--out", str(blocker / "curves")], capsys)
    assert "metrics file not found" in err  # the missing CSV is found first
    err = _fails(["viz", "--out", str(tmp_path)], capsys)
    assert "must end with .png" in err
    err = _fails(["export", "--format", "torch_export", "--out", str(tmp_path / "m.onnx")],
                 capsys)
    assert "must end with .pt2" in err


def test_plot_bad_run_dir(tmp_path, capsys):
    err = _fails(["plot", str(tmp_path / "missing")], capsys)
    assert "run directory not found" in err
    (tmp_path / "metrics.csv").write_text("epoch,note\n1,hello\n")
    err = _fails(["plot", str(tmp_path)], capsys)
    assert "no loss, accuracy or lr column" in err


def test_missing_checkpoint(tmp_path, capsys):
    err = _fails(["export", "--checkpoint", str(tmp_path / "w.pth"),
                  "--out", str(tmp_path / "m.onnx")], capsys)
    assert "w.pth" in err and "not found" in err


def test_plot_writes_curves_from_partial_metrics(tmp_path, capsys):
    (tmp_path / "metrics.csv").write_text(
        "epoch,train_loss,val_loss,val_top1,lr\n1,2.3,2.2,20.0,0.001\n2,1.9,,35.5,0.0008\n"
        "3,1.4,1.5,50.0,0.0005\n"
    )
    assert cli_main(["plot", str(tmp_path), "--out", str(tmp_path / "png")]) == 0
    from PIL import Image

    for name in ("loss", "accuracy", "lr"):
        img = np.asarray(Image.open(tmp_path / "png" / f"{name}.png").convert("RGB"))
        assert img.shape == (400, 640, 3)
        blue = (np.abs(img.astype(int) - (31, 119, 180)).sum(-1) < 30).sum()
        assert blue > 100  # the first curve is drawn


def test_api_errors():
    with pytest.raises(ValueError, match="returned_stages"):
        biformer_fpn_backbone("biformer_tiny", returned_stages=(3, 1), depths=(1, 1, 1, 1))
    with pytest.raises(ValueError, match="trainable_layers must be between 0"):
        biformer_fpn_backbone("biformer_tiny", trainable_layers=7, depths=(1, 1, 1, 1))
    with pytest.raises(ValueError, match="norm_layer must be one of"):
        biformer_fpn_backbone("biformer_tiny", norm_layer="group_norm")
    with pytest.raises(ValueError, match="did you mean biformer_small"):
        biformer_fpn_backbone("biformer_smal")
    model = timm.create_model("biformer_tiny", depths=(1, 1, 1, 1)).eval()
    with pytest.raises(ValueError, match=r"\[batch, channels, height, width\]"):
        capture_routing(model, torch.randn(3, 224, 224))
    rec = capture_routing(model, torch.randn(1, 3, 224, 224))[0]
    with pytest.raises(ValueError, match=r"image must be \[224, 224, 3\] uint8"):
        draw_panel(np.zeros((100, 100, 3), np.uint8), rec, (5, 5))
    with pytest.raises(ValueError, match="outside the 224x224 image"):
        draw_panel(np.zeros((224, 224, 3), np.uint8), rec, (300, 5))
