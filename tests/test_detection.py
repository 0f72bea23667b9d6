"""torchvision detectors on the BiFormer + FPN backbone: shapes, training, frozen stages, norms."""

from __future__ import annotations

import pytest
import timm
import torch
from torch import nn
from torchvision.ops.misc import FrozenBatchNorm2d

import biformer
from biformer.checkpoint import CheckpointError
from biformer.detection import (
    biformer_fpn_backbone,
    fasterrcnn_biformer,
    fcos_biformer,
    maskrcnn_biformer,
    retinanet_biformer,
)
from biformer.detection.freezing import body_parts

SMALL = dict(depths=(1, 1, 2, 1))  # biformer_tiny with fewer blocks: same stages, faster
SIZE = 128
# small heads and samplers keep a CPU training step around a second
RCNN_FAST = dict(
    min_size=SIZE, max_size=SIZE, rpn_batch_size_per_image=64, box_batch_size_per_image=64,
    rpn_pre_nms_top_n_train=300, rpn_post_nms_top_n_train=100,
    rpn_pre_nms_top_n_test=300, rpn_post_nms_top_n_test=100,
)


def _scenes(n: int = 2, size: int = SIZE) -> tuple[list[torch.Tensor], list[dict]]:
    """Noise images with two coloured rectangles each (class 1 red, class 2 blue) and boxes."""
    gen = torch.Generator().manual_seed(1)
    colours = {1: (0.9, 0.2, 0.1), 2: (0.1, 0.3, 0.9)}
    images, targets = [], []
    for _ in range(n):
        img = torch.rand(3, size, size, generator=gen) * 0.3
        boxes, labels = [], []
        for label, colour in colours.items():
            x0, y0 = torch.randint(0, size - 56, (2,), generator=gen).tolist()
            w, h = torch.randint(28, 56, (2,), generator=gen).tolist()
            img[:, y0 : y0 + h, x0 : x0 + w] = torch.tensor(colour)[:, None, None]
            boxes.append([x0, y0, x0 + w, y0 + h])
            labels.append(label)
        images.append(img)
        targets.append(dict(boxes=torch.tensor(boxes, dtype=torch.float32),
                            labels=torch.tensor(labels)))
    return images, targets


def _loss(model: nn.Module, images, targets) -> float:
    """Training-mode loss without an update, under a fixed seed (same anchor sampling)."""
    model.train()
    with torch.random.fork_rng(), torch.no_grad():
        torch.manual_seed(123)
        return float(sum(model(images, targets).values()))


def _train(model: nn.Module, images, targets, steps: int, lr: float = 1e-4) -> tuple[float, float]:
    """Loss before and after ``steps`` AdamW steps on the fixed batch."""
    before = _loss(model, images, targets)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr)
    model.train()
    for _ in range(steps):
        loss_dict = model(images, targets)
        loss = sum(loss_dict.values())
        assert torch.isfinite(loss), loss_dict
        opt.zero_grad()
        loss.backward()
        opt.step()
    return before, _loss(model, images, targets)


def _check_detections(model: nn.Module, images) -> None:
    model.eval()
    with torch.no_grad():
        out = model(images)
    assert len(out) == len(images)
    for det in out:
        boxes = det["boxes"]
        assert boxes.ndim == 2 and boxes.shape[1] == 4 and boxes.shape[0] > 0
        assert det["scores"].shape == det["labels"].shape == (boxes.shape[0],)
        assert (boxes[:, 2:] >= boxes[:, :2]).all()
        assert boxes.min() >= 0 and boxes.max() <= SIZE


def test_fpn_backbone_levels_and_layer_norms():
    backbone = biformer_fpn_backbone("biformer_tiny", n_win=4, **SMALL)
    assert backbone.out_channels == 256
    x = torch.randn(2, 3, SIZE, SIZE + 32)
    feats = backbone(x)
    assert list(feats) == ["0", "1", "2", "3", "pool"]
    for key, stride in zip(feats, (4, 8, 16, 32, 64), strict=True):
        # P6 ("pool") is a stride-2 max pool of P5: ceil(5 / 2) = 3 columns at width 160
        assert feats[key].shape == (2, 256, -(-SIZE // stride), -(-(SIZE + 32) // stride))
    # the paper's extra LayerNorm sits on each returned stage, not in the classifier
    assert len(backbone.norms) == 4
    assert [n.normalized_shape[0] for n in backbone.norms] == [64, 128, 256, 512]
    assert not hasattr(backbone.body, "head") or isinstance(backbone.body.head, nn.Identity)
    stage_out = {}
    hooks = [n.register_forward_hook(lambda m, a, o, i=i: stage_out.__setitem__(i, o))
             for i, n in enumerate(backbone.norms)]
    backbone(x)
    for h in hooks:
        h.remove()
    normed = stage_out[2]  # B, C, H, W: normalised over channels at every position
    assert torch.allclose(normed.mean(1), torch.zeros(()), atol=1e-4)
    assert torch.allclose(normed.var(1, unbiased=False), torch.ones(()), atol=1e-2)


def test_single_stage_backbone_has_p6_p7():
    backbone = retinanet_biformer("biformer_tiny", num_classes=3, n_win=4,
                                  backbone_kwargs=SMALL).backbone
    feats = backbone(torch.randn(1, 3, SIZE, SIZE))
    assert list(feats) == ["0", "1", "2", "p6", "p7"]
    assert [f.shape[-1] for f in feats.values()] == [SIZE // 8, SIZE // 16, SIZE // 32,
                                                    SIZE // 64, SIZE // 128]
    assert len(backbone.norms) == 3


@pytest.mark.slow
def test_faster_rcnn_training_reduces_loss_and_eval_returns_boxes():
    images, targets = _scenes()
    model = fasterrcnn_biformer("biformer_tiny", num_classes=3, n_win=4, box_score_thresh=0.0,
                                backbone_kwargs=dict(SMALL, out_channels=64), **RCNN_FAST)
    before, after = _train(model, images, targets, steps=5)
    assert after < 0.9 * before, (before, after)
    _check_detections(model, images)


@pytest.mark.slow
def test_retinanet_training_reduces_loss_and_eval_returns_boxes():
    images, targets = _scenes()
    model = retinanet_biformer("biformer_tiny", num_classes=3, n_win=4, min_size=SIZE,
                               max_size=SIZE, score_thresh=0.0,
                               backbone_kwargs=dict(SMALL, out_channels=64))
    before, after = _train(model, images, targets, steps=5, lr=1e-3)
    assert after < 0.9 * before, (before, after)
    _check_detections(model, images)


@pytest.mark.parametrize("builder", [maskrcnn_biformer, fcos_biformer])
def test_mask_rcnn_and_fcos_train_step(builder):
    images, targets = _scenes(n=1)
    for t in targets:  # masks from the boxes, for Mask R-CNN
        masks = torch.zeros(len(t["boxes"]), SIZE, SIZE, dtype=torch.uint8)
        for i, (x0, y0, x1, y1) in enumerate(t["boxes"].int().tolist()):
            masks[i, y0:y1, x0:x1] = 1
        t["masks"] = masks
    extra = RCNN_FAST if builder is maskrcnn_biformer else dict(min_size=SIZE, max_size=SIZE)
    model = builder("biformer_tiny", num_classes=3, n_win=4,
                    backbone_kwargs=dict(SMALL, out_channels=64), **extra)
    model.train()
    loss_dict = model(images, targets)
    if builder is maskrcnn_biformer:
        assert "loss_mask" in loss_dict
    loss = sum(loss_dict.values())
    loss.backward()
    assert torch.isfinite(loss)
    grads = [p.grad for p in model.backbone.body.stages[0].parameters()]
    assert any(g is not None and g.abs().sum() > 0 for g in grads)


def test_frozen_stages_keep_weights_and_batchnorm_statistics():
    backbone = biformer_fpn_backbone("biformer_tiny", n_win=4, trainable_layers=2, **SMALL)
    parts = body_parts(backbone.body)  # stem, stages 0..3
    for part in parts[:3]:
        assert all(not p.requires_grad for p in part.parameters())
    for part in parts[3:]:
        assert all(p.requires_grad for p in part.parameters())
    assert all(p.requires_grad for p in backbone.norms.parameters())
    backbone.train()
    frozen_bn = parts[0][1]  # stem BatchNorm
    trained_bn = parts[3].downsample[1]
    assert not frozen_bn.training and trained_bn.training
    before_frozen = frozen_bn.running_mean.clone()
    before_trained = trained_bn.running_mean.clone()
    backbone(torch.randn(2, 3, 64, 64) * 3 + 1)
    assert torch.equal(frozen_bn.running_mean, before_frozen)
    assert not torch.equal(trained_bn.running_mean, before_trained)


def test_norm_layer_options():
    frozen = biformer_fpn_backbone("biformer_tiny", n_win=4, norm_layer="frozen_bn", **SMALL)
    kinds = {type(m) for m in frozen.body.modules()}
    assert FrozenBatchNorm2d in kinds and nn.BatchNorm2d not in kinds
    synced = biformer_fpn_backbone("biformer_tiny", n_win=4, norm_layer="sync_bn", **SMALL)
    kinds = {type(m) for m in synced.body.modules()}
    assert nn.SyncBatchNorm in kinds and nn.BatchNorm2d not in kinds
    synced.train()  # without a process group SyncBatchNorm acts as BatchNorm
    assert synced(torch.randn(2, 3, 64, 64))["0"].shape == (2, 256, 16, 16)


def test_backbone_loads_classifier_checkpoint(tmp_path):
    clf = timm.create_model("biformer_tiny", num_classes=10, **SMALL)
    for p in clf.parameters():
        p.data.normal_()
    path = tmp_path / "clf.pth"
    torch.save({"model": clf.state_dict()}, path)
    backbone = biformer_fpn_backbone("biformer_tiny", n_win=4, weights=path, **SMALL)
    ref = clf.state_dict()["stages.2.blocks.1.attn.qkv.qkv.weight"]
    assert torch.equal(backbone.body.stages[2].blocks[1].attn.qkv.qkv.weight, ref)
    assert backbone.trainable_layers == 3  # with weights: stem and stage 0 frozen by default
    other = timm.create_model("biformer_tiny", num_classes=10, depths=(1, 1, 1, 1))
    torch.save({"model": other.state_dict()}, tmp_path / "other.pth")
    with pytest.raises(CheckpointError, match="does not fit"):
        biformer_fpn_backbone("biformer_tiny", n_win=4, weights=tmp_path / "other.pth",
                              **SMALL)


@pytest.mark.slow
def test_paper_size_image_runs_with_n_win_16():
    # 800x1333 (padded to 800x1344): stage maps 200x336 ... padded to multiples of 16
    model = fasterrcnn_biformer("biformer_tiny", num_classes=3, n_win=16,
                                box_score_thresh=0.0, backbone_kwargs=dict(depths=(1, 1, 2, 1)))
    assert biformer.layers.set_backend(model, "chunked") == 4
    model.eval()
    image = torch.rand(3, 800, 1333)
    seen = {}
    hook = model.backbone.register_forward_hook(lambda m, a, out: seen.update(out))
    with torch.no_grad():
        (det,) = model([image])
    hook.remove()
    assert seen["0"].shape == (1, 256, 200, 336)
    assert det["boxes"].shape[0] > 0
    assert det["boxes"][:, 2].max() <= 1333 and det["boxes"][:, 3].max() <= 800
