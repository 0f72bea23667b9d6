"""segmentation_models_pytorch models with the BiFormer encoder (``tu-biformer_*``), unmodified."""

from __future__ import annotations

import pytest
import torch

import biformer  # noqa: F401  (registers the models with timm)
from biformer.detection import StageNormFeatures, add_stage_norms

smp = pytest.importorskip("segmentation_models_pytorch", reason="the 'seg' extra is not installed")

# biformer_tiny with fewer blocks (same stages and widths) keeps the CPU tests short; the extra
# keyword arguments reach timm.create_model through smp's encoder kwargs
ENCODER = dict(encoder_name="tu-biformer_tiny", encoder_weights=None, depths=(1, 1, 2, 1))
CLASSES = 3


@pytest.mark.parametrize("arch", ["Unet", "FPN", "UPerNet", "Segformer"])
def test_decoders_with_padding_input(arch):
    # 256 px: stage maps 64/32/16/8 are not multiples of the default n_win=7 -> auto padding
    model = getattr(smp, arch)(classes=CLASSES, auto_pad=True, **ENCODER).eval()
    x = torch.randn(1, 3, 256, 256)
    with torch.no_grad():
        y = model(x)
    assert y.shape == (1, CLASSES, 256, 256)
    assert torch.isfinite(y).all() and y.std() > 0


@pytest.mark.parametrize(("arch", "output_stride"), [
    ("DeepLabV3", 8), ("DeepLabV3Plus", 16), ("PAN", 16),
])
def test_decoders_needing_output_stride(arch, output_stride):
    model = getattr(smp, arch)(classes=CLASSES, encoder_output_stride=output_stride,
                               auto_pad=True, **ENCODER).eval()
    x = torch.randn(1, 3, 256, 256)
    with torch.no_grad():
        feats = model.encoder(x)
        y = model(x)
    assert feats[-1].shape[-2:] == (256 // output_stride, 256 // output_stride)
    assert y.shape == (1, CLASSES, 256, 256)


def test_unet_any_input_size_with_n_win_override():
    # Unet accepts sizes that are not multiples of 32; n_win=8 from the encoder kwargs
    model = smp.Unet(classes=CLASSES, n_win=8, auto_pad=True, **ENCODER).eval()
    bra = next(m for m in model.encoder.modules() if hasattr(m, "routing_tap"))
    assert bra.n_win == 8
    with torch.no_grad():
        y = model(torch.randn(1, 3, 203, 171))
    assert y.shape == (1, CLASSES, 203, 171)


def test_default_encoder_runs_any_size_strict_mode_says_how_to_fix():
    model = smp.FPN(classes=CLASSES, **ENCODER).eval()  # default: pads where needed
    with torch.no_grad():
        assert model(torch.randn(1, 3, 256, 256)).shape == (1, CLASSES, 256, 256)
    strict = smp.FPN(classes=CLASSES, auto_pad=False, **ENCODER).eval()
    with pytest.raises(ValueError, match="auto_pad=True"):
        strict(torch.randn(1, 3, 256, 256))


@pytest.mark.parametrize("arch", ["Unet", "UPerNet"])
def test_one_training_step_reduces_the_loss(arch):
    model = getattr(smp, arch)(classes=CLASSES, n_win=4, auto_pad=True, **ENCODER)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 128, 128, generator=gen)
    target = torch.randint(0, CLASSES, (2, 128, 128), generator=gen)
    opt = torch.optim.SGD(model.parameters(), lr=1e-2)  # a small plain gradient step
    loss_fn = torch.nn.CrossEntropyLoss()
    model.train()
    loss = loss_fn(model(x), target)
    opt.zero_grad()
    loss.backward()
    assert all(p.grad is not None for p in model.encoder.parameters() if p.requires_grad)
    opt.step()
    with torch.no_grad():
        after = loss_fn(model(x), target)
    assert after < loss.detach(), (float(loss.detach()), float(after))


def test_stage_norms_for_smp_models():
    model = add_stage_norms(smp.FPN(classes=CLASSES, n_win=4, auto_pad=True, **ENCODER))
    assert isinstance(model.encoder.model, StageNormFeatures)
    assert add_stage_norms(model).encoder.model is model.encoder.model  # idempotent
    x = torch.randn(2, 3, 128, 128) * 4 + 2
    model.eval()
    with torch.no_grad():
        feats = model.encoder(x)
        y = model(x)
    assert y.shape == (2, CLASSES, 128, 128)
    for f in feats[2:]:  # the four BiFormer stages (after the input and smp's empty stride-2 map)
        assert torch.allclose(f.mean(1), torch.zeros(()), atol=1e-4)
    with pytest.raises(TypeError, match="tu-biformer"):
        add_stage_norms(torch.nn.Linear(2, 2))
