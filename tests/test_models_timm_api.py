"""The models' timm contract beyond the basics: any input size, factory arguments, pooling,
FX, named attention choices, injectable layers and the one registry of model specs."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import timm
import torch
from torch import nn

import biformer
from biformer.layers import Attention, AttentionLePE, AttentionLePE2d, BiLevelRoutingAttention
from biformer.models import MODEL_NAMES, MODEL_SPECS, known_layouts

from .test_models import _one_thread  # noqa: F401  (autouse: one intra-op thread)

MINI = dict(depths=(1, 1, 2, 1), dims=(32, 64, 96, 128))
DOCS = Path(__file__).resolve().parents[1] / "docs" / "models.md"


def twins(name: str, **kwargs):
    """Two models with the same weights, built with different options."""
    a = timm.create_model(name, **MINI, **kwargs.pop("a", {})).eval()
    b = timm.create_model(name, **MINI, **kwargs.pop("b", {})).eval()
    b.load_state_dict(a.state_dict())
    return a, b


@pytest.mark.parametrize("name", MODEL_NAMES)
@pytest.mark.parametrize("size", [(32, 32), (96, 96), (128, 128), (70, 45)])
def test_any_size_runs_by_default(name, size):
    model = timm.create_model(name, num_classes=3, **MINI).eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, *size))
    assert out.shape == (1, 3) and torch.isfinite(out).all() and out.std() > 0


@pytest.mark.parametrize("name", ["biformer_tiny", "biformer_stl"])
def test_padding_only_where_needed(name):
    """At sizes that fit the regions the default (padding) model is the strict one, exactly."""
    padded, strict = twins(name, b=dict(auto_pad=False))
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        assert torch.equal(padded(x), strict(x))
        odd = torch.randn(1, 3, 200, 170)
        assert padded(odd).shape == (1, 1000)
        with pytest.raises(ValueError, match="auto_pad=True"):
            strict(odd)


def test_pretrained_cfgs_declare_min_input_size():
    for name in MODEL_NAMES:
        cfg = timm.models.get_pretrained_cfg(f"{name}.in1k")
        assert cfg.min_input_size == (3, 32, 32) and cfg.input_size == (3, 224, 224)
        assert not cfg.fixed_input_size


def test_img_size_and_set_input_size():
    model = timm.create_model("biformer_tiny", img_size=256, **MINI)
    assert model.img_size == (256, 256)
    assert timm.models.get_model_input_config(model)["input_size"] == (3, 256, 256)
    model.set_input_size(img_size=(320, 192))
    assert timm.models.get_model_input_config(model)["input_size"] == (3, 320, 192)
    with torch.no_grad():
        assert model(torch.randn(1, 3, 320, 192)).shape == (1, 1000)


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_device_and_dtype_factory_arguments(name):
    model = timm.create_model(name, device="meta", dtype=torch.float64, **MINI)
    tensors = [*model.parameters(), *model.buffers()]
    assert all(t.device.type == "meta" for t in tensors)
    assert all(t.dtype == torch.float64 for t in model.parameters())
    bf16 = timm.create_model(name, dtype=torch.bfloat16, num_classes=2, **MINI).eval()
    assert {p.dtype for p in bf16.parameters()} == {torch.bfloat16}
    with torch.no_grad():
        out = bf16(torch.randn(1, 3, 64, 64, dtype=torch.bfloat16))
    assert out.dtype == torch.bfloat16 and torch.isfinite(out.float()).all()


def test_reset_classifier_keeps_mode_device_and_dtype():
    model = timm.create_model("biformer_stl", **MINI).to(torch.float64).eval()
    model.reset_classifier(5)
    assert not model.head.training and model.head.weight.dtype == torch.float64
    model.train()
    model.reset_classifier(3, "max")
    assert model.head.training and model.head_pool.training
    assert model.head.out_features == 3


@pytest.mark.parametrize("pool, reduce, width", [
    ("avg", lambda f: f.mean((2, 3)), 128),
    ("max", lambda f: f.amax((2, 3)), 128),
    ("avgmax", lambda f: 0.5 * (f.mean((2, 3)) + f.amax((2, 3))), 128),
    ("catavgmax", lambda f: torch.cat([f.mean((2, 3)), f.amax((2, 3))], 1), 256),
])
def test_global_pool_choices(pool, reduce, width):
    model = timm.create_model("biformer_tiny", global_pool=pool, num_classes=4, **MINI).eval()
    x = torch.randn(2, 3, 96, 96)
    with torch.no_grad():
        feats = model.forward_features(x)
        pooled = model.forward_head(feats, pre_logits=True)
        torch.testing.assert_close(pooled, reduce(feats))
        assert model.head_hidden_size == width == model.head.in_features
        torch.testing.assert_close(model(x), model.head(pooled))
    assert model.num_features == 128


def test_unsupported_global_pool_fails_as_timm_expects():
    with pytest.raises(AssertionError, match="global_pool"):
        timm.create_model("biformer_tiny", global_pool="token", **MINI)
    model = timm.create_model("biformer_tiny", **MINI)
    with pytest.raises(AssertionError, match="global_pool"):
        model.reset_classifier(7, "map")
    assert model.global_pool == "avg"  # unchanged


def test_forward_intermediates_nhwc():
    model = timm.create_model("biformer_stl_nchw", **MINI).eval()
    x = torch.randn(1, 3, 96, 64)
    with torch.no_grad():
        nchw = model.forward_intermediates(x, intermediates_only=True)
        final, nhwc = model.forward_intermediates(x, output_fmt="NHWC")
    for a, b in zip(nchw, nhwc, strict=True):
        torch.testing.assert_close(b, a.permute(0, 2, 3, 1))
    assert final.shape == (1, 128, 3, 2)


@pytest.mark.parametrize("name", ["biformer_tiny", "biformer_stl_nchw"])
def test_fx_feature_extraction(name):
    torch.manual_seed(3)
    fx = timm.create_model(name, features_only=True, feature_cls="fx", **MINI).eval()
    torch.manual_seed(3)  # the same initial weights
    lists = timm.create_model(name, features_only=True, **MINI).eval()
    x = torch.randn(1, 3, 100, 80)
    with torch.no_grad():
        for a, b in zip(fx(x), lists(x), strict=True):
            torch.testing.assert_close(a, b)


def test_fx_traces_with_timms_leaf_modules():
    from timm.layers import get_notrace_modules
    from torchvision.models.feature_extraction import create_feature_extractor

    assert {BiLevelRoutingAttention, AttentionLePE, AttentionLePE2d} <= set(get_notrace_modules())
    model = timm.create_model("biformer_tiny", num_classes=5, **MINI).eval()
    graph = create_feature_extractor(model, {"head": "logits"},
                                     tracer_kwargs=dict(leaf_modules=get_notrace_modules()))
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(graph(x)["logits"], model(x))


@pytest.mark.filterwarnings("ignore::FutureWarning")  # torch.jit.script is deprecated
def test_torchscript_refuses_with_a_reason():
    model = timm.create_model("biformer_tiny", **MINI)
    with pytest.raises(RuntimeError, match="TorchScript cannot"):
        torch.jit.script(model)


@pytest.mark.parametrize("name, codes, names", [
    ("biformer_tiny", (1, 4, -1, -2), (1, 4, "global", "global_lepe")),
    ("biformer_stl_nchw", (1, 4, 16, -1), (1, 4, 16, "global_lepe")),
])
def test_named_global_attention_matches_the_official_codes(name, codes, names):
    official, named = twins(name, a=dict(topks=list(codes)), b=dict(topks=names))
    assert [type(s.blocks[0].attn) for s in official.stages] == \
        [type(s.blocks[0].attn) for s in named.stages]
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(official(x), named(x))


def test_default_last_stage_is_global_attention_with_lepe():
    kinds = {"biformer_tiny": AttentionLePE, "biformer_stl": AttentionLePE,
             "biformer_stl_nchw": AttentionLePE2d}
    for name, kind in kinds.items():
        model = timm.create_model(name, **MINI)
        assert type(model.stages[3].blocks[0].attn) is kind
    plain = timm.create_model("biformer_stl", topks=(1, 4, 16, "global"), **MINI)
    assert type(plain.stages[3].blocks[0].attn) is Attention


def test_norm_and_act_layers_are_injectable():
    model = timm.create_model("biformer_tiny", norm_layer="rmsnorm", act_layer="relu", **MINI)
    block = model.stages[1].blocks[0]
    assert isinstance(block.norm1, timm.layers.RmsNorm) and isinstance(block.mlp[2], nn.ReLU)
    assert isinstance(model.stem[2], nn.ReLU)
    nchw = timm.create_model("biformer_stl_nchw", act_layer=nn.SiLU, **MINI)
    assert isinstance(nchw.stages[0].blocks[0].mlp[1], nn.SiLU)
    with torch.no_grad():
        assert torch.isfinite(model(torch.randn(1, 3, 64, 64))).all()


def test_model_specs_are_the_one_registry():
    assert tuple(MODEL_SPECS) == MODEL_NAMES == biformer.models.MODEL_NAMES
    assert {MODEL_SPECS[n].drop_path_rate for n in ("biformer_tiny", "biformer_small",
                                                     "biformer_base")} == {0.1, 0.15, 0.4}
    from biformer.engine.recipe import Recipe, drop_path_for

    for name, spec in MODEL_SPECS.items():
        assert drop_path_for(Recipe(model=name)) == spec.drop_path_rate
    layouts = known_layouts()
    assert sorted(layouts.values()) == sorted(MODEL_NAMES)
    assert layouts[("biformer", (4, 4, 18, 4), (96, 192, 384, 768))] == "biformer_base"


def test_docs_table_matches_the_specs():
    number = r" ([\d.]+)"
    pattern = rf"^\| `(biformer_\w+)` \|{number} M \|{number} G \|{number} \|{number} \|"
    rows = re.findall(pattern, DOCS.read_text(), flags=re.M)
    assert rows and {r[0] for r in rows} <= set(MODEL_NAMES)
    for name, *numbers in rows:
        spec = MODEL_SPECS[name]
        assert tuple(map(float, numbers)) == (spec.params_m, spec.gmacs, spec.top1,
                                              spec.drop_path_rate), name
