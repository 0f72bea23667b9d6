"""Pixels in, augmentation out: wide images are scaled (not clipped) and the reference recipe's
RandAugment survives every magnitude it draws."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.datasets import load_digits

from biformer.engine.images import open_rgb, to_rgb
from biformer.engine.recipe import REFERENCE
from biformer.engine.transforms import create_train_transform, posterize

from .cli import run


def _digit(index: int) -> np.ndarray:
    """A real handwritten digit as 8-bit grey levels, 64x64 (nearest upsampling)."""
    d = load_digits().images[index] * (255.0 / 16.0)
    return np.kron(np.round(d), np.ones((8, 8))).astype(np.uint8)


@pytest.mark.parametrize("mode", ["I;16", "I", "F"])
def test_wide_images_keep_their_grey_levels(tmp_path, mode):
    grey = _digit(7)
    if mode == "I;16":
        img = Image.fromarray(grey.astype(np.uint16) * 257)
    elif mode == "I":
        img = Image.fromarray(grey.astype(np.int32) * 257)
    else:
        img = Image.fromarray(grey.astype(np.float32) / 255.0)
    assert img.mode == mode
    naive = np.asarray(img.convert("RGB"))[..., 0]
    assert len(np.unique(naive)) <= 2  # what plain convert("RGB") does: two grey levels
    got = np.asarray(to_rgb(img))[..., 0]
    assert np.abs(got.astype(int) - grey).max() <= 1
    path = tmp_path / f"digit_{mode.replace(';', '')}.tif"
    img.save(path)
    assert np.abs(np.asarray(open_rgb(path))[..., 0].astype(int) - grey).max() <= 1


def test_predict_reads_a_16_bit_png_like_the_8_bit_one(tmp_path, capsys):
    grey = _digit(11)
    eight, sixteen = tmp_path / "d8.png", tmp_path / "d16.png"
    Image.fromarray(grey).save(eight)
    Image.fromarray(grey.astype(np.uint16) * 257).save(sixteen)
    assert Image.open(sixteen).mode.startswith("I")
    assert np.array_equal(np.asarray(open_rgb(sixteen)), np.asarray(open_rgb(eight)))
    rc, out, err = run(capsys, "predict", str(eight), str(sixteen), "--model", "biformer_tiny",
                       "--model-kwargs", "depths=1,1,1,1", "dims=16,32,64,64", "head_dim=16",
                       "--checkpoint", str(_random_checkpoint(tmp_path)), "--json",
                       "--device", "cpu")
    assert rc == 0, err
    first, second = (line for line in out.splitlines() if line.startswith("{"))
    assert first.split('"top"')[1] == second.split('"top"')[1]


def _random_checkpoint(tmp_path):
    import timm

    path = tmp_path / "tiny.pth"
    torch.manual_seed(0)
    model = timm.create_model("biformer_tiny", num_classes=10, depths=(1, 1, 1, 1),
                              dims=(16, 32, 64, 64), head_dim=16)
    torch.save({"model": model.state_dict()}, path)
    return path


def test_posterize_keeps_its_meaning_at_zero_bits():
    img = Image.fromarray(np.arange(256, dtype=np.uint8).reshape(16, 16))
    assert np.asarray(posterize(img, 0)).max() == 0  # keep no bit: black, as TF/UDA define it
    assert np.array_equal(np.asarray(posterize(img, 1)), np.asarray(img) & 0x80)
    assert posterize(img, 8) is img


@pytest.mark.slow
def test_reference_randaugment_survives_thousands_of_real_images():
    digits = [Image.fromarray(_digit(i)).convert("RGB") for i in range(200)]
    data_config = {"input_size": (3, 64, 64), "mean": (0.5,) * 3, "std": (0.5,) * 3}
    transform = create_train_transform(REFERENCE, data_config)
    ra = next(t for t in transform.transforms if hasattr(t, "ops"))
    calls = {"zero_bits": 0}
    op = next(o for o in ra.ops if o.name == "PosterizeIncreasing")
    patched = op.aug_fn

    def counting(img, bits, **kw):
        calls["zero_bits"] += int(bits) == 0
        return patched(img, bits, **kw)

    op.aug_fn = counting
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)
    for i in range(6000):
        out = transform(digits[i % len(digits)])
        assert out.shape == (3, 64, 64) and torch.isfinite(out).all()
    assert calls["zero_bits"] > 0  # the magnitude that used to crash was drawn and survived


def test_unpatched_posterize_is_what_crashed():
    from timm.data.auto_augment import posterize as timm_posterize

    img = Image.fromarray(np.zeros((8, 8, 3), dtype=np.uint8))
    with pytest.raises(ValueError, match="bits must be"):
        timm_posterize(img, 0)


def test_unreadable_image_stays_unreadable_after_ultralytics_patches_pillow(tmp_path, monkeypatch):
    """Importing ultralytics replaces ``PIL.Image.open`` with an opener that, on a file Pillow
    cannot identify, loads a HEIF plugin and raises ImportError without it: our readers must
    still say "unreadable image" (an OSError), in predict and in the training folders."""
    import PIL.Image
    from timm.data import create_dataset

    from biformer.engine.folders import RobustImageFolder

    pytest.importorskip("ultralytics")
    monkeypatch.setattr(PIL.Image, "open", PIL.Image.open)  # restored when the test ends
    import ultralytics.utils.checks as checks
    import ultralytics.utils.patches as patches

    monkeypatch.setattr(PIL.Image, "open", patches.image_open)
    monkeypatch.setattr(patches, "_pil_plugins_registered", False)
    monkeypatch.setattr(checks, "check_requirements", lambda *a, **k: True)  # never pip install
    monkeypatch.setitem(__import__("sys").modules, "pi_heif", None)  # the plugin is not there
    bad = tmp_path / "data" / "cat" / "bad.jpg"
    bad.parent.mkdir(parents=True)
    bad.write_bytes(b"\xff\xd8 definitely not a jpeg")
    with pytest.raises(ImportError):
        PIL.Image.open(bad)  # what the patched opener does on its own
    with pytest.raises(OSError, match="cannot identify image file"):
        open_rgb(bad)
    Image.fromarray(_digit(3)).save(bad.parent / "good.png")
    reader = create_dataset("", root=str(tmp_path / "data"), search_split=False).reader
    dataset = RobustImageFolder(reader, transform=None, replace_unreadable=True)
    images = [dataset[i] for i in range(len(dataset))]
    assert all(img is not None for img, _, _ in images)
    assert sum("bad.jpg" in s for _, _, skipped in images for s in skipped) == 1
