"""The BiFormer models as timm citizens: shapes, gradients, features, heads, any input size."""

from __future__ import annotations

import pytest
import timm
import torch
from timm.models import group_parameters
from timm.optim import param_groups_weight_decay

import biformer
from biformer.models import MODEL_NAMES

# small stand-ins of the real layouts for the checks of the mechanics (fast to build and run)
MINI = dict(depths=(1, 1, 2, 1), dims=(32, 64, 96, 128))
DIMS = {
    "biformer_tiny": (64, 128, 256, 512),
    "biformer_small": (64, 128, 256, 512),
    "biformer_base": (96, 192, 384, 768),
    "biformer_stl": (96, 192, 384, 768),
    "biformer_stl_nchw": (96, 192, 384, 768),
}
# 112x112 input: stage maps 28/14/7/4 (two-conv stem) or 28/14/7/3 (4x4 patch stem)
LAST_SIDE = {"biformer_tiny": 4, "biformer_small": 4, "biformer_base": 4, "biformer_stl": 3,
             "biformer_stl_nchw": 3}


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Small tensors: one intra-op thread avoids OpenMP spin-waits when the 2 cores are shared."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_forward_backward_and_features(name):
    model = timm.create_model(name, num_classes=7).train()
    x = torch.randn(1, 3, 112, 112)
    out = model(x)
    assert out.shape == (1, 7) and torch.isfinite(out).all()
    out.square().mean().backward()
    no_grad = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.any()]
    assert not no_grad, f"parameters without gradient: {no_grad[:5]}"

    model.eval()
    with torch.no_grad():
        feats = model.forward_features(x)
        final, inter = model.forward_intermediates(x)
        logits = model(x)
    c3, side = DIMS[name][-1], LAST_SIDE[name]
    assert feats.shape == (1, c3, side, side) and model.num_features == c3
    torch.testing.assert_close(final, feats)
    assert [t.shape[1] for t in inter] == list(DIMS[name])
    assert [t.shape[-1] for t in inter] == [28, 14, 7, side]
    torch.testing.assert_close(model.forward_head(feats), logits)
    assert model.forward_head(feats, pre_logits=True).shape == (1, c3)


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_features_only_default_indices_channels_and_reductions(name):
    feat = timm.create_model(name, features_only=True, **MINI)
    assert feat.feature_info.channels() == list(MINI["dims"])
    assert feat.feature_info.reduction() == [4, 8, 16, 32]
    with torch.no_grad():
        maps = feat(torch.randn(1, 3, 224, 224))
    assert [tuple(m.shape) for m in maps] == [
        (1, c, 224 // r, 224 // r) for c, r in zip(MINI["dims"], (4, 8, 16, 32), strict=True)
    ]


def test_features_only_out_indices_and_getter_agree():
    x = torch.randn(1, 3, 112, 112)
    torch.manual_seed(1)
    lists = timm.create_model("biformer_tiny", features_only=True, out_indices=(1, 3), **MINI)
    torch.manual_seed(1)  # same initial weights
    getter = timm.create_model("biformer_tiny", features_only=True, out_indices=(1, 3),
                               feature_cls="getter", **MINI)
    assert lists.feature_info.channels() == [64, 128]
    with torch.no_grad():
        a, b = lists(x), getter(x)
    assert [tuple(t.shape) for t in a] == [(1, 64, 14, 14), (1, 128, 4, 4)]
    for ta, tb in zip(a, b, strict=True):
        torch.testing.assert_close(ta, tb)


def test_forward_intermediates_and_pruning():
    model = timm.create_model("biformer_stl", **MINI).eval()
    x = torch.randn(1, 3, 112, 112)
    with torch.no_grad():
        full = model.forward_intermediates(x, indices=2, norm=True)[1]
        only = model.forward_intermediates(x, indices=[0, 2], stop_early=True,
                                           intermediates_only=True)
        ref = model.forward_intermediates(x, intermediates_only=True)
    assert len(full) == 2
    torch.testing.assert_close(full[1], model.norm(ref[3]))  # norm only on the last stage
    torch.testing.assert_close(only[1], ref[2])
    kept = model.prune_intermediate_layers(indices=(0, 1))
    assert kept == [0, 1] and len(model.stages) == 2 and model.num_features == 64
    with torch.no_grad():
        assert model(x).shape == (1, 64, 14, 14)  # no norm, no head, no pooling left
    with pytest.raises(AssertionError, match="output_fmt"):
        model.forward_intermediates(x, output_fmt="NLC")


def official_forward(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The official T/S/B forward, written from the paper's description: every block gets
    and returns NCHW (``x + pos_embed(x)``, then NHWC attention and MLP with residuals)."""
    x = model.stem(x)
    for stage in model.stages:
        x = stage.downsample(x)
        for blk in stage.blocks:
            x = x + blk.pos_embed(x)
            x = x.permute(0, 2, 3, 1)
            x = x + blk.attn(blk.norm1(x))
            x = x + blk.mlp(blk.norm2(x))
            x = x.permute(0, 3, 1, 2)
    x = model.norm(x)
    return model.head(x.flatten(2).mean(-1))


def test_stage_level_permutes_match_official_per_block_permutes():
    model = timm.create_model("biformer_tiny").eval()
    with torch.no_grad():
        for m in model.modules():  # non-trivial norms and positional convs
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 1.5)
        x = torch.randn(2, 3, 112, 112)
        torch.testing.assert_close(model(x), official_forward(model, x), rtol=1e-5, atol=1e-5)


def test_grad_checkpointing_same_output_and_gradients(monkeypatch):
    torch.manual_seed(0)
    model = timm.create_model("biformer_tiny", num_classes=5, **MINI).train()
    x = torch.randn(2, 3, 112, 112)

    def run() -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        model.zero_grad()
        out = model(x)
        out.square().sum().backward()
        return out.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}

    out_ref, grads_ref = run()
    calls = []
    original = biformer.models.stages.checkpoint

    def counting(fn, *args, **kwargs):
        calls.append(kwargs.get("use_reentrant"))
        return original(fn, *args, **kwargs)

    monkeypatch.setattr(biformer.models.stages, "checkpoint", counting)
    model.set_grad_checkpointing(True)
    out_ckpt, grads_ckpt = run()
    assert calls == [False] * sum(MINI["depths"])
    torch.testing.assert_close(out_ckpt, out_ref, rtol=1e-6, atol=1e-6)
    for name, grad in grads_ref.items():
        torch.testing.assert_close(grads_ckpt[name], grad, rtol=1e-5, atol=1e-6, msg=name)


def test_reset_classifier_and_pooling():
    model = timm.create_model("biformer_stl_nchw", num_classes=3, **MINI).eval()
    x = torch.randn(2, 3, 112, 112)
    assert model.get_classifier().out_features == 3
    model.reset_classifier(11)
    with torch.no_grad():
        assert model(x).shape == (2, 11)
        model.reset_classifier(0)
        assert isinstance(model.get_classifier(), torch.nn.Identity)
        pooled = model(x)
        assert pooled.shape == (2, 128)
        model.reset_classifier(0, "")
        unpooled = model(x)
        assert unpooled.shape == (2, 128, 3, 3)
        torch.testing.assert_close(unpooled.mean((2, 3)), pooled)
        model.reset_classifier(4, "")  # a classifier at every position
        assert model(x).shape == (2, 4, 3, 3)
    with pytest.raises(AssertionError, match="global_pool"):
        model.reset_classifier(4, "token")
    with pytest.raises(ValueError, match="num_classes"):
        model.reset_classifier(-1)


def test_num_classes_in_chans_and_drop_path_overrides():
    model = timm.create_model("biformer_tiny", num_classes=2, in_chans=1, drop_path_rate=0.2,
                              **MINI)
    assert model.stem[0].in_channels == 1
    assert model(torch.randn(1, 1, 112, 112)).shape == (1, 2)
    rates = [b.drop_path.drop_prob for s in model.stages for b in s.blocks
             if not isinstance(b.drop_path, torch.nn.Identity)]
    assert rates == pytest.approx([0.2 / 4, 0.4 / 4, 0.6 / 4, 0.2])


def test_pretrained_cfg_and_optimizer_helpers():
    model = timm.create_model("biformer_small", pretrained=False, **MINI)
    cfg = model.pretrained_cfg
    assert cfg["input_size"] == (3, 224, 224) and cfg["interpolation"] == "bicubic"
    assert cfg["mean"] == timm.data.IMAGENET_DEFAULT_MEAN and cfg["classifier"] == "head"
    assert cfg["first_conv"] == "stem.0" and cfg["tag"] == "in1k"
    assert cfg["url"].startswith("https://api.onedrive.com/")
    data_cfg = timm.data.resolve_data_config({}, model=model)
    assert data_cfg["crop_pct"] == 0.875
    assert model.no_weight_decay() == set()
    groups = group_parameters(model, model.group_matcher())
    assert sum(len(g) for g in groups.values()) == len(list(model.parameters()))
    # stem, 4 stages, and the unmatched rest (norm, head) last, as timm groups them
    assert len(group_parameters(model, model.group_matcher(coarse=True))) == 6
    groups = {g["weight_decay"]: g["params"] for g in param_groups_weight_decay(model, 0.05)}
    assert all(p.ndim > 1 for p in groups[0.05]) and all(p.ndim <= 1 for p in groups[0.0])


def test_registered_with_timm_and_pretrained_tags():
    names = timm.list_models("biformer*", pretrained=True)
    assert sorted(names) == sorted(f"{n}.in1k" for n in MODEL_NAMES)


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_odd_sizes_run_by_default(name):
    model = timm.create_model(name, num_classes=4, **MINI).eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, 97, 75))
        feats = model.forward_intermediates(torch.randn(1, 3, 97, 75), intermediates_only=True)
    assert out.shape == (1, 4) and torch.isfinite(out).all()
    assert feats[0].shape[-2:] == ((25, 19) if "stl" not in name else (24, 18))


def test_large_odd_input_tiny():
    model = timm.create_model("biformer_tiny").eval()
    with torch.no_grad():
        maps = model.forward_intermediates(torch.randn(1, 3, 600, 500), intermediates_only=True)
    assert [tuple(m.shape[-2:]) for m in maps] == [(150, 125), (75, 63), (38, 32), (19, 16)]


def test_n_win_per_stage_topks_and_backend_overrides():
    x = torch.randn(1, 3, 256, 256)  # maps 64/32/16/8: multiples of 8, as 512x512 with n_win 8
    model = timm.create_model("biformer_tiny", n_win=8, **MINI).eval()
    assert model.stages[0].blocks[0].attn.n_win == 8
    other = timm.create_model("biformer_tiny", n_win=(4, 4, 2, 1), topks=(2, 3, 4, -1), **MINI)
    assert biformer.layers.set_backend(other, "chunked") == 4
    attn = other.stages[2].blocks[0].attn
    assert (attn.n_win, attn.topk, attn.backend) == (2, 4, "chunked")
    assert type(other.stages[3].blocks[0].attn).__name__ == "Attention"
    with torch.no_grad():
        assert model(x).shape == (1, 1000)

    ref = timm.create_model("biformer_tiny", **MINI).eval()
    chunked = timm.create_model("biformer_tiny", **MINI).eval()
    biformer.layers.set_backend(ref, "reference")
    biformer.layers.set_backend(chunked, "chunked")
    chunked.load_state_dict(ref.state_dict())
    with torch.no_grad():
        y = torch.randn(1, 3, 112, 112)
        torch.testing.assert_close(chunked(y), ref(y), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name", ["biformer_tiny", "biformer_stl"])
def test_output_stride_for_dense_prediction(name):
    for output_stride, reductions in ((16, [4, 8, 16, 16]), (8, [4, 8, 8, 8])):
        feat = timm.create_model(name, features_only=True, output_stride=output_stride,
                                 **MINI)
        assert feat.feature_info.reduction() == reductions
        with torch.no_grad():
            maps = feat(torch.randn(1, 3, 112, 112))
        assert [m.shape[-1] for m in maps] == [112 // r for r in reductions]


def test_bad_options_raise_clear_errors():
    with pytest.raises(ValueError, match="output_stride"):
        timm.create_model("biformer_tiny", output_stride=4, **MINI)
    with pytest.raises(ValueError, match="n_win must be an int or a sequence of 4"):
        timm.create_model("biformer_tiny", n_win=(7, 7), **MINI)
    with pytest.raises(ValueError, match="topk=0"):
        timm.create_model("biformer_stl", topks=(1, 4, 0, -2), **MINI)
    with pytest.raises(ValueError, match="topk=16 must be between 1"):
        timm.create_model("biformer_tiny", n_win=2, **MINI)
    with pytest.raises(AssertionError, match="global_pool"):
        timm.create_model("biformer_tiny", global_pool="token", **MINI)
    with pytest.raises(ValueError, match="topk='global'"):
        timm.create_model("biformer_stl_nchw", topks=(1, 4, 16, "global"), **MINI)
    with pytest.raises(ValueError, match="topks must be an int or a sequence of 4"):
        timm.create_model("biformer_tiny", topks=(1, 4, 16, "lepe"), **MINI)
    model = timm.create_model("biformer_tiny", auto_pad=False, **MINI)
    with pytest.raises(ValueError, match="auto_pad=True"):
        model(torch.randn(1, 3, 100, 100))
