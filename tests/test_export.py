"""Export: ONNX (onnxruntime parity, dynamic batch/size), TorchScript, torch.export, the command."""

from __future__ import annotations

import copy
import re

import pytest
import timm
import torch

import biformer
from biformer import ops
from biformer.cli import main as cli_main
from biformer.export import (
    export_onnx,
    export_program,
    export_torchscript,
    exportable,
    relative_error,
    trace_size,
)
from biformer.layers import BiLevelRoutingAttention

SMALL = dict(depths=(1, 1, 2, 1), auto_pad=True)
TOL = 1e-4


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    # the automatic backend is the memory-bounded one, which does not export: export falls back
    return timm.create_model("biformer_tiny", **SMALL).eval()


def _bra(model):
    return [m for m in model.modules() if isinstance(m, BiLevelRoutingAttention)]


def test_exportable_runs_default_layers_on_reference_and_refuses_a_forced_one(model, tmp_path):
    assert ops.get_default_backend() == "auto"
    with exportable(model):
        assert ops.get_default_backend() == "reference"
    assert ops.get_default_backend() == "auto"
    assert {m.backend for m in _bra(model)} == {None}  # the model itself is never changed
    forced = copy.deepcopy(model)
    biformer.layers.set_backend(forced, "chunked")
    with pytest.raises(ops.BackendUnavailable, match="traced for export"):
        export_onnx(forced, tmp_path / "forced.onnx", sizes=[(224, 224)], verify=False)


def test_trace_size_pads_every_layer(model):
    # 224 -> stage maps 56/28/14: multiples of n_win=7, no padding; 232 -> 58/29/15: all pad
    assert trace_size(model, (224, 224)) == (232, 232)
    assert trace_size(model, (232, 232)) == (232, 232)


def test_onnx_matches_pytorch_at_two_sizes(model, tmp_path):
    ort = pytest.importorskip("onnxruntime", reason="onnxruntime is not installed")
    onnx = pytest.importorskip("onnx", reason="onnx is not installed")
    path = tmp_path / "tiny.onnx"
    report = export_onnx(model, path, sizes=[(224, 224), (201, 173)])
    assert report.verified and not report.failures and report.dynamic_spatial
    assert set(report.errors) == {(224, 224), (201, 173)}
    assert report.max_error <= TOL, report.errors
    assert {m.backend for m in _bra(model)} == {None}  # untouched by the export
    graph = onnx.load(str(path)).graph
    dims = [d.dim_param for d in graph.input[0].type.tensor_type.shape.dim]
    assert dims == ["batch", "", "height", "width"]
    # independently of the report: another batch and another odd size
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x = torch.randn(3, 3, 150, 187)
    out = torch.from_numpy(session.run(None, {"image": x.numpy()})[0])
    with torch.no_grad():
        ref = model(x)
    assert out.shape == (3, 1000)
    assert relative_error(out, ref) <= TOL


def test_torchscript_matches_pytorch_at_two_sizes(model, tmp_path):
    path = tmp_path / "tiny.pt"
    report = export_torchscript(model, path, sizes=[(224, 224), (201, 173)])
    assert not report.failures and report.max_error <= TOL, report
    loaded = torch.jit.load(str(path))
    x = torch.randn(1, 3, 97, 131)
    with torch.no_grad():
        assert relative_error(loaded(x), model(x)) <= TOL


@pytest.mark.slow
def test_torch_export_program_and_its_size_guard(tmp_path):
    torch.manual_seed(0)
    small = timm.create_model("biformer_tiny", depths=(1, 1, 1, 1), auto_pad=True).eval()
    report = export_program(small, tmp_path / "tiny.pt2", sizes=[(224, 224), (448, 448),
                                                                 (201, 173)])
    # sizes padded like 224 (none) run and match; an odd size is refused by a guard, clearly
    assert report.errors[(224, 224)] <= TOL and report.errors[(448, 448)] <= TOL
    assert (201, 173) in report.failures and "Guard" in report.failures[(201, 173)]


@pytest.mark.slow
def test_export_command_onnx(tmp_path, capsys):
    pytest.importorskip("onnxruntime", reason="onnxruntime is not installed")
    out = tmp_path / "tiny.onnx"
    code = cli_main(["export", "--model", "biformer_tiny", "--format", "onnx", "--out", str(out)])
    assert code == 0 and out.stat().st_size > 1_000_000
    text = capsys.readouterr().out
    errors = re.findall(r"(\d+)x(\d+): max relative error vs PyTorch ([\d.e+-]+)", text)
    assert [(int(h), int(w)) for h, w, _ in errors] == [(224, 224), (233, 209)]
    assert all(float(e) <= TOL for _, _, e in errors)
