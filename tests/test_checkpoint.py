"""Official checkpoints load through timm and through ``biformer.load_checkpoint``, value-exact.

The official state_dicts are rebuilt here from the original code's naming (``downsample_layers``,
``stages.{i}.{j}`` or ``stages.{i}.blocks.{j}``) with random values; the T/S/B generators
reproduce the official key lists (their parameter totals are checked against the released
checkpoints' counts), and every tensor is checked to land in the right place.
"""

from __future__ import annotations

import argparse

import pytest
import timm
import torch
from safetensors.torch import save_file

import biformer
from biformer import CheckpointError, load_checkpoint

Shapes = dict[str, tuple[int, ...]]

# parameter totals of the released T/S/B checkpoints (BatchNorm buffers excluded)
OFFICIAL_PARAMS = {"biformer_tiny": 13_142_760, "biformer_small": 25_536_232,
                   "biformer_base": 56_804_968}
LAYOUTS = {
    "biformer_tiny": ((2, 2, 8, 2), (64, 128, 256, 512)),
    "biformer_small": ((4, 4, 18, 4), (64, 128, 256, 512)),
    "biformer_base": ((4, 4, 18, 4), (96, 192, 384, 768)),
    "biformer_stl": ((2, 2, 6, 2), (96, 192, 384, 768)),
    "biformer_stl_nchw": ((2, 2, 6, 2), (96, 192, 384, 768)),
}


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Small tensors: one intra-op thread avoids OpenMP spin-waits when the 2 cores are shared."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


class _Layout:
    """Collects ``name -> shape`` entries in the official module naming."""

    def __init__(self) -> None:
        self.shapes: Shapes = {}

    def conv(self, p: str, cin: int, cout: int, k: int, groups: int = 1) -> None:
        self.shapes[f"{p}.weight"] = (cout, cin // groups, k, k)
        self.shapes[f"{p}.bias"] = (cout,)

    def linear(self, p: str, cin: int, cout: int, bias: bool = True) -> None:
        self.shapes[f"{p}.weight"] = (cout, cin)
        if bias:
            self.shapes[f"{p}.bias"] = (cout,)

    def affine(self, p: str, c: int) -> None:
        self.shapes[f"{p}.weight"] = (c,)
        self.shapes[f"{p}.bias"] = (c,)

    def bn(self, p: str, c: int) -> None:
        self.affine(p, c)
        self.shapes[f"{p}.running_mean"] = (c,)
        self.shapes[f"{p}.running_var"] = (c,)
        self.shapes[f"{p}.num_batches_tracked"] = ()


# a reduced layout for the tests of the loading mechanics (fast to build and save)
MINI = dict(depths=(1, 1, 2, 1), dims=(32, 64, 96, 128))


def official_shapes(name: str, num_classes: int = 1000, depths: tuple[int, ...] | None = None,
                    dims: tuple[int, ...] | None = None) -> Shapes:
    """Keys and shapes of an official checkpoint of model ``name`` (or of its architecture
    with other ``depths``/``dims``)."""
    depths = depths or LAYOUTS[name][0]
    dims = dims or LAYOUTS[name][1]
    lay = _Layout()
    if name in ("biformer_tiny", "biformer_small", "biformer_base"):
        lay.conv("downsample_layers.0.0", 3, dims[0] // 2, 3)
        lay.bn("downsample_layers.0.1", dims[0] // 2)
        lay.conv("downsample_layers.0.3", dims[0] // 2, dims[0], 3)
        lay.bn("downsample_layers.0.4", dims[0])
        for i in range(1, 4):
            lay.conv(f"downsample_layers.{i}.0", dims[i - 1], dims[i], 3)
            lay.bn(f"downsample_layers.{i}.1", dims[i])
        for i, d in enumerate(dims):
            for j in range(depths[i]):
                p = f"stages.{i}.{j}"
                lay.conv(f"{p}.pos_embed", d, d, 3, groups=d)
                lay.affine(f"{p}.norm1", d)
                if i < 3:
                    lay.conv(f"{p}.attn.lepe", d, d, 5, groups=d)
                    lay.linear(f"{p}.attn.qkv.qkv", d, 3 * d)
                    lay.linear(f"{p}.attn.wo", d, d)
                else:
                    lay.linear(f"{p}.attn.qkv", d, 3 * d, bias=False)
                    lay.linear(f"{p}.attn.proj", d, d)
                    lay.conv(f"{p}.attn.lepe", d, d, 5, groups=d)
                lay.affine(f"{p}.norm2", d)
                lay.linear(f"{p}.mlp.0", d, 3 * d)
                lay.linear(f"{p}.mlp.3", 3 * d, d)
    else:
        nchw = name == "biformer_stl_nchw"
        lay.conv("downsample_layers.0.0", 3, dims[0], 4)
        lay.bn("downsample_layers.0.1", dims[0])
        for i in range(1, 4):
            lay.bn(f"downsample_layers.{i}.0", dims[i - 1])
            lay.conv(f"downsample_layers.{i}.1", dims[i - 1], dims[i], 2)
        for i, d in enumerate(dims):
            for j in range(depths[i]):
                p = f"stages.{i}.blocks.{j}"
                lay.affine(f"{p}.norm1", d)
                if i < 3 and nchw:
                    lay.conv(f"{p}.attn.lepe", d, d, 5, groups=d)
                    lay.conv(f"{p}.attn.qkv_linear", d, 3 * d, 1)
                    lay.conv(f"{p}.attn.output_linear", d, d, 1)
                elif i < 3:
                    lay.conv(f"{p}.attn.lepe", d, d, 5, groups=d)
                    lay.linear(f"{p}.attn.qkv.qkv", d, 3 * d)
                    lay.linear(f"{p}.attn.wo", d, d)
                elif nchw:
                    lay.shapes[f"{p}.attn.qkv.weight"] = (3 * d, d, 1, 1)
                    lay.conv(f"{p}.attn.proj", d, d, 1)
                    lay.conv(f"{p}.attn.lepe", d, d, 5, groups=d)
                else:
                    lay.linear(f"{p}.attn.qkv", d, 3 * d, bias=False)
                    lay.linear(f"{p}.attn.proj", d, d)
                    lay.conv(f"{p}.attn.lepe", d, d, 5, groups=d)
                lay.affine(f"{p}.norm2", d)
                if nchw:
                    lay.conv(f"{p}.mlp.0", d, 4 * d, 1)
                    lay.conv(f"{p}.mlp.2", 4 * d, d, 1)
                else:
                    lay.linear(f"{p}.mlp.0", d, 4 * d)
                    lay.linear(f"{p}.mlp.2", 4 * d, d)
    lay.bn("norm", dims[-1])
    lay.linear("head", dims[-1], num_classes)
    return lay.shapes


def official_state_dict(name: str, num_classes: int = 1000, seed: int = 0, **layout) -> dict:
    """Random official-layout weights (positive BatchNorm variances)."""
    gen = torch.Generator().manual_seed(seed)
    sd = {}
    for key, shape in official_shapes(name, num_classes, **layout).items():
        if key.endswith("num_batches_tracked"):
            sd[key] = torch.tensor(1000, dtype=torch.int64)
        elif key.endswith("running_var"):
            sd[key] = torch.rand(shape, generator=gen) + 0.5
        else:
            sd[key] = torch.empty(shape).uniform_(-0.1, 0.1, generator=gen)
    return sd


def our_key(official: str) -> str:
    """Where an official key lives in this package's models (written independently of the
    library's regex filter)."""
    parts = official.split(".")
    if parts[0] == "downsample_layers":
        i, rest = int(parts[1]), parts[2:]
        return ".".join((["stem"] if i == 0 else ["stages", str(i), "downsample"]) + rest)
    if parts[0] == "stages" and parts[2].isdigit():
        return ".".join(["stages", parts[1], "blocks", *parts[2:]])
    return official


def assert_loaded(model: torch.nn.Module, official: dict) -> None:
    ours = model.state_dict()
    assert len(ours) == len(official)
    for key, value in official.items():
        assert torch.equal(ours[our_key(key)], value), key


@pytest.mark.parametrize("name", list(OFFICIAL_PARAMS))
def test_official_layout_matches_released_parameter_count(name):
    shapes = official_shapes(name)
    buffers = ("running_mean", "running_var", "num_batches_tracked")
    total = sum(torch.Size(s).numel() for k, s in shapes.items() if not k.endswith(buffers))
    assert total == OFFICIAL_PARAMS[name]
    with torch.device("meta"):
        model = timm.create_model(name)
    assert sum(p.numel() for p in model.parameters()) == total


@pytest.mark.parametrize("name", list(LAYOUTS))
def test_official_checkpoint_loads_through_timm_and_load_checkpoint(name, tmp_path):
    official = official_state_dict(name)
    path = tmp_path / f"{name}_official.pth"
    torch.save({"model": official}, path)

    model = timm.create_model(name, pretrained=True, pretrained_cfg_overlay=dict(file=str(path)))
    assert_loaded(model, official)

    with torch.no_grad():
        for tensor in model.state_dict().values():
            tensor.zero_()
    result = load_checkpoint(model, path)
    assert (result.missing_keys, result.unexpected_keys, result.mismatched_keys) == ([], [], [])
    assert result.entry == "model"
    assert_loaded(model, official)


def test_stage3_qkv_lands_where_official_had_it(tmp_path):
    official = official_state_dict("biformer_tiny")
    path = tmp_path / "tiny.pth"
    torch.save({"model": official}, path)
    model = timm.create_model("biformer_tiny").eval()
    load_checkpoint(model, path)
    assert torch.equal(model.stages[2].blocks[7].attn.qkv.qkv.weight,
                       official["stages.2.7.attn.qkv.qkv.weight"])
    assert torch.equal(model.stages[3].blocks[1].attn.qkv.weight,
                       official["stages.3.1.attn.qkv.weight"])
    assert torch.equal(model.stages[3].downsample[0].weight,
                       official["downsample_layers.3.0.weight"])
    assert torch.equal(model.stem[3].weight, official["downsample_layers.0.3.weight"])
    assert torch.equal(model.norm.running_var, official["norm.running_var"])

    # the other path gives the same logits
    other = timm.create_model("biformer_tiny", pretrained=True,
                              pretrained_cfg_overlay=dict(file=str(path))).eval()
    x = torch.randn(1, 3, 112, 112)
    with torch.no_grad():
        torch.testing.assert_close(other(x), model(x), rtol=0, atol=0)


def test_safetensors_loads_through_both_paths(tmp_path):
    official = official_state_dict("biformer_stl_nchw", **MINI)
    path = tmp_path / "stl_nchw.safetensors"
    save_file(official, str(path))
    model = timm.create_model("biformer_stl_nchw", pretrained=True,
                              pretrained_cfg_overlay=dict(file=str(path)), **MINI)
    assert_loaded(model, official)
    model = timm.create_model("biformer_stl_nchw", **MINI)
    load_checkpoint(model, path)
    assert_loaded(model, official)


def test_own_layout_round_trip_with_wrapper_prefixes(tmp_path):
    src = timm.create_model("biformer_stl", num_classes=5, **MINI)
    path = tmp_path / "own.pth"
    torch.save({"state_dict": {f"module._orig_mod.{k}": v for k, v in src.state_dict().items()},
                "args": argparse.Namespace(lr=1e-3)}, path)
    dst = timm.create_model("biformer_stl", num_classes=5, **MINI)
    result = load_checkpoint(dst, path)
    assert result.entry == "state_dict"
    for key, value in src.state_dict().items():
        assert torch.equal(dst.state_dict()[key], value), key


def test_ema_weights(tmp_path):
    plain = official_state_dict("biformer_tiny", seed=1, **MINI)
    ema = official_state_dict("biformer_tiny", seed=2, **MINI)
    path = tmp_path / "ema.pth"
    torch.save({"model": plain, "model_ema": ema}, path)
    model = timm.create_model("biformer_tiny", **MINI)
    assert load_checkpoint(model, path, use_ema=True).entry == "model_ema"
    assert_loaded(model, ema)
    load_checkpoint(model, path)
    assert_loaded(model, plain)

    no_ema = tmp_path / "no_ema.pth"
    torch.save({"model": plain}, no_ema)
    with pytest.raises(CheckpointError, match="no EMA weights"):
        load_checkpoint(model, no_ema, use_ema=True)


def test_wrong_model_names_missing_unexpected_and_probable_model(tmp_path):
    path = tmp_path / "tiny.pth"
    torch.save({"model": official_state_dict("biformer_tiny")}, path)
    with torch.device("meta"):  # only the key names and shapes matter here
        small = timm.create_model("biformer_small")
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(small, path)
    msg = str(info.value)
    assert str(path) in msg
    assert "missing keys (" in msg and "stages.0.blocks.2." in msg
    assert "biformer_tiny" in msg and "biformer_small" in msg

    stl = tmp_path / "stl.pth"
    torch.save({"model": official_state_dict("biformer_stl")}, stl)
    with pytest.raises(CheckpointError, match="unexpected keys") as info:
        load_checkpoint(small, stl)
    assert "biformer_stl" in str(info.value)

    other = tmp_path / "other.pth"
    torch.save({"model": official_state_dict("biformer_tiny", depths=(1, 1, 1, 1),
                                              dims=(32, 64, 96, 192))}, other)
    model = timm.create_model("biformer_tiny", **MINI)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(CheckpointError, match="shape mismatches") as info:
        load_checkpoint(model, other)
    assert "depths (1, 1, 1, 1), dims (32, 64, 96, 192)" in str(info.value)
    for key, value in model.state_dict().items():  # nothing was half-loaded
        assert torch.equal(value, before[key]), key


def test_other_num_classes_needs_strict_false(tmp_path):
    official = official_state_dict("biformer_tiny", **MINI)
    path = tmp_path / "tiny.pth"
    torch.save({"model": official}, path)
    model = timm.create_model("biformer_tiny", num_classes=10, **MINI)
    with pytest.raises(CheckpointError, match="num_classes=1000") as info:
        load_checkpoint(model, path)
    assert "strict=False" in str(info.value)

    head_before = model.head.weight.clone()
    with pytest.warns(UserWarning, match="shape-mismatched"):
        result = load_checkpoint(model, path, strict=False)
    assert sorted(result.mismatched_keys) == ["head.bias", "head.weight"]
    assert torch.equal(model.head.weight, head_before)
    assert torch.equal(model.stages[2].blocks[1].attn.wo.weight,
                       official["stages.2.1.attn.wo.weight"])

    # timm's own path drops the classifier when num_classes differs
    via_timm = timm.create_model("biformer_tiny", num_classes=10, pretrained=True,
                                 pretrained_cfg_overlay=dict(file=str(path)), **MINI)
    assert torch.equal(via_timm.stem[0].weight, official["downsample_layers.0.0.weight"])
    assert via_timm.head.weight.shape == (10, 128)


def test_unreadable_files_raise_one_clear_error(tmp_path):
    model = timm.create_model("biformer_stl", **MINI)
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(torch.randint(0, 256, (4096,), dtype=torch.uint8).numpy().tobytes())
    with pytest.raises(CheckpointError, match="cannot read .*garbage.pth"):
        load_checkpoint(model, garbage)

    good = tmp_path / "good.pth"
    torch.save({"model": official_state_dict("biformer_stl", **MINI)}, good)
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="cannot read .*truncated.pth"):
        load_checkpoint(model, truncated)

    bad_st = tmp_path / "bad.safetensors"
    bad_st.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}")
    with pytest.raises(CheckpointError, match="bad.safetensors"):
        load_checkpoint(model, bad_st)

    with pytest.raises(FileNotFoundError, match="missing.pth"):
        load_checkpoint(model, tmp_path / "missing.pth")
    with pytest.raises(CheckpointError, match="is a directory"):
        load_checkpoint(model, tmp_path)


class CodeOnLoad:
    """Unpickling this object calls a function: loading it would run code."""

    def __reduce__(self):
        return (print, ("this would run at load time",))


def test_pickles_that_need_code_are_refused(tmp_path, capsys):
    path = tmp_path / "evil.pth"
    torch.save({"model": official_state_dict("biformer_tiny", **MINI), "obj": CodeOnLoad()},
               path)
    model = timm.create_model("biformer_tiny", **MINI)
    with pytest.raises(CheckpointError, match="refusing to load .*evil.pth.*needs print"):
        load_checkpoint(model, path)
    assert "would run" not in capsys.readouterr().out


def test_not_a_state_dict(tmp_path):
    model = timm.create_model("biformer_tiny", **MINI)
    path = tmp_path / "list.pth"
    torch.save([torch.ones(2)], path)
    with pytest.raises(CheckpointError, match="not a state_dict"):
        load_checkpoint(model, path)
    path2 = tmp_path / "mixed.pth"
    torch.save({"model": {"stem.0.weight": torch.ones(1), "step": 3}}, path2)
    with pytest.raises(CheckpointError, match="'step' holds a int"):
        load_checkpoint(model, path2)


def test_pretrained_url_is_cached_under_a_per_model_name(monkeypatch):
    official = official_state_dict("biformer_tiny", **MINI)
    calls = []

    def fake_download(url, **kwargs):
        calls.append((url, kwargs))
        return {"model": {k: v.clone() for k, v in official.items()}}

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", fake_download)
    model = timm.create_model("biformer_tiny", pretrained=True, **MINI)
    assert_loaded(model, official)
    (url, kwargs), = calls
    assert url == model.pretrained_cfg["url"] and url.startswith("https://")
    assert kwargs["file_name"] == "biformer_tiny.in1k.pth"
    assert kwargs["weights_only"] is True


def test_unknown_keys_are_not_dropped_by_the_filter():
    official = official_state_dict("biformer_tiny", **MINI)
    official["extra.weight"] = torch.ones(3)
    converted = biformer.models.checkpoint_filter_fn({"model": official}, None)
    assert "extra.weight" in converted
    assert len(converted) == len(official)
    with pytest.raises(RuntimeError, match="extra.weight"):
        timm.create_model("biformer_tiny", pretrained=True,
                          pretrained_cfg_overlay=dict(state_dict=official), **MINI)
