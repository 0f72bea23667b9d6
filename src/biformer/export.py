"""Exporting BiFormer models: ONNX (dynamic batch and spatial size), TorchScript, torch.export.

    biformer export --model biformer_tiny --checkpoint best.pth --format onnx --out tiny.onnx
    (the command: ``biformer.export_command``)

Every export runs the routed attention on the ``reference`` backend (plain PyTorch ops: topk,
gather, matmul, softmax; the ``chunked``/``flex``/``triton`` paths use autograd functions,
compiled kernels or Triton and do not export): while a model is traced for export the automatic
backend choice is the reference (``biformer.ops.dispatch``), and ``exportable`` makes it the
choice of calls that follow the default too. A layer whose ``backend`` attribute forces another
backend makes the export fail with that reason. Each format is verified against the eager model at the requested
size and at an odd size, and the maximum relative error is reported.

Dynamic spatial size: the BRA layers pad their input to a multiple of ``n_win`` only when needed
(a Python ``if`` on the shape). Tracing records the branch taken, so ONNX and TorchScript are
traced at a nearby size where every auto-padded layer pads: the graph then holds the padding
and cropping, with amounts computed from the input shape (zero when no padding is needed), and
runs at any size. ``torch.export`` keeps the branch as a guard instead: its program runs at the
sizes whose padding pattern matches the example's, and says so (a guard error) at others.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor, nn

from .layers import BiLevelRoutingAttention, BRA2d
from .ops import use_backend

__all__ = [
    "FORMATS",
    "ExportReport",
    "exportable",
    "export_model",
    "export_onnx",
    "export_program",
    "export_torchscript",
    "odd_size",
    "relative_error",
    "spatial_dynamic_supported",
    "trace_size",
]

FORMATS = ("onnx", "torchscript", "torch_export")
SUFFIXES = {"onnx": ".onnx", "torchscript": ".pt", "torch_export": ".pt2"}
TOLERANCE = 1e-4

Size = tuple[int, int]


@dataclass
class ExportReport:
    """What an export wrote and how closely it matches the eager model.

    ``errors`` maps ``(H, W)`` to the maximum relative error ``max|out - ref| / max|ref|``;
    ``failures`` maps sizes at which the exported model could not run to the reason;
    ``dynamic_spatial`` says whether the file accepts other heights and widths.
    """

    path: Path
    format: str
    example_size: Size
    errors: dict[Size, float] = field(default_factory=dict)
    failures: dict[Size, str] = field(default_factory=dict)
    verified: bool = True
    dynamic_spatial: bool = True

    @property
    def max_error(self) -> float:
        return max(self.errors.values(), default=float("nan"))

    def ok(self, tolerance: float = TOLERANCE) -> bool:
        return not self.failures and all(e <= tolerance for e in self.errors.values())


def relative_error(out: Tensor, ref: Tensor) -> float:
    """``max|out - ref| / max|ref|`` in float64."""
    out, ref = out.double(), ref.double()
    if out.shape != ref.shape:
        return float("inf")
    return float((out - ref).abs().max() / ref.abs().max().clamp_min(1e-12))


def odd_size(size: int) -> Size:
    """An odd-sized input ``(size + 9, size - 15)`` next to a square ``size`` (224 -> 233x209)."""
    return (size + 9 if size % 2 == 0 else size + 10, size - 15 if size % 2 == 0 else size - 16)


def _bra_layers(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if isinstance(m, (BiLevelRoutingAttention, BRA2d))]


@contextmanager
def exportable(model: nn.Module) -> Iterator[nn.Module]:
    """Within the context, the BRA layers of ``model`` that follow the default backend run on
    the ``reference`` backend (the only one that exports)."""
    with use_backend("reference"):
        yield model


class _ProbeDone(Exception):
    pass


def _layer_sizes(model: nn.Module, size: Size, in_chans: int) -> list[tuple[nn.Module, Size]]:
    """Input map size of each BRA layer for an ``H x W`` image (stops after the last layer)."""
    layers = _bra_layers(model)
    seen: list[tuple[nn.Module, Size]] = []

    def hook(module: nn.Module, args: tuple) -> None:
        x = args[0]
        hw = tuple(x.shape[2:4]) if isinstance(module, BRA2d) else tuple(x.shape[1:3])
        seen.append((module, hw))
        if len(seen) == len(layers):
            raise _ProbeDone

    handles = [m.register_forward_pre_hook(hook) for m in layers]
    try:
        with torch.no_grad():
            model(torch.randn(1, in_chans, *size))
    except _ProbeDone:
        pass
    finally:
        for h in handles:
            h.remove()
    return seen


def trace_size(model: nn.Module, size: Size, *, in_chans: int = 3, tries: int = 32) -> Size:
    """A size near ``size`` at which every auto-padded BRA layer pads (see module notes).

    Returns ``size`` itself when it qualifies or when no layer pads automatically.
    """
    layers = [m for m in _bra_layers(model) if getattr(m, "auto_pad", False)]
    if not layers:
        return size
    h, w = size
    for step in range(tries):
        cand = (h + 8 * step, w + 8 * step)
        sizes = _layer_sizes(model, cand, in_chans)
        if all(
            (sh % m.n_win or sw % m.n_win) for m, (sh, sw) in sizes
            if getattr(m, "auto_pad", False)
        ):
            return cand
    raise RuntimeError(
        f"found no size near {size} at which every BRA layer pads; export with dynamic=False"
    )


@contextmanager
def _quiet() -> Iterator[None]:
    """Silence the expected tracer and deprecation warnings of the TorchScript-based paths."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", category=FutureWarning)
        yield


def _in_chans(model: nn.Module) -> int:
    return int(getattr(model, "in_chans", 3))


def _check_sizes(sizes: Sequence[Size | int]) -> list[Size]:
    out = []
    for s in sizes:
        pair = (int(s), int(s)) if isinstance(s, int) else tuple(int(v) for v in s)
        if len(pair) != 2 or min(pair) < 32:
            raise ValueError(f"sizes must be (H, W) pairs of at least 32 pixels, got {s!r}")
        if pair not in out:
            out.append(pair)
    if not out:
        raise ValueError("give at least one size to export and verify at")
    return out


def spatial_dynamic_supported(model: nn.Module) -> bool:
    """False for models with ``BRA2d`` layers: they derive their region grid with Python
    ``max``/``ceil`` on the input size, which tracing freezes (the spatial size is then fixed;
    the batch stays dynamic)."""
    return not any(isinstance(m, BRA2d) for m in model.modules())


def _checks(sizes: list[Size], batches: Sequence[int], in_chans: int) -> list[tuple[Size, Tensor]]:
    """Random verification inputs, one per size."""
    gen = torch.Generator().manual_seed(0)
    return [(s, torch.randn(b, in_chans, *s, generator=gen))
            for s, b in zip(sizes, batches, strict=True)]


def _verify(report: ExportReport, run, model: nn.Module,
            checks: list[tuple[Size, Tensor]]) -> ExportReport:
    """Compare ``run(x)`` with the eager ``model(x)`` for every check input."""
    for size, x in checks:
        with torch.no_grad():
            ref = model(x)
            try:
                report.errors[size] = relative_error(run(x), ref)
            except Exception as err:  # noqa: BLE001 - runtimes raise their own error types
                report.failures[size] = str(err).strip().splitlines()[0][:300]
    return report


def _traced_plan(model: nn.Module, sizes: list[Size], dynamic: bool
                 ) -> tuple[Size, bool, list[tuple[Size, Tensor]]]:
    """Example size, whether H/W are dynamic, and the verification inputs of a traced export."""
    chans = _in_chans(model)
    spatial = dynamic and spatial_dynamic_supported(model)
    if spatial:
        example = trace_size(model, sizes[0], in_chans=chans)
        checks = _checks(sizes, [2] + [1] * (len(sizes) - 1), chans)
    else:
        example = sizes[0]
        checks = _checks(sizes[:1], [2 if dynamic else 1], chans)
    return example, spatial, checks


def export_onnx(
    model: nn.Module,
    path: str | os.PathLike,
    *,
    sizes: Sequence[Size | int] = ((224, 224), (233, 209)),
    opset: int = 17,
    dynamic: bool = True,
    verify: bool = True,
) -> ExportReport:
    """Write ``model`` (NCHW image in, its output out) as ONNX and check it with onnxruntime.

    Args:
        sizes: ``(H, W)`` sizes to verify at; the first is the nominal size (the only one the
            file accepts with ``dynamic=False``).
        opset: ONNX opset (TorchScript-based exporter, which keeps the shape arithmetic).
        dynamic: batch, height and width of ``image`` ``[N, C, H, W]`` are dynamic axes (height
            and width stay fixed for models with ``BRA2d`` layers, see
            ``spatial_dynamic_supported``).
        verify: compare onnxruntime's outputs with PyTorch's at every size (batch 2 at the
            first; skipped, ``verified=False``, when onnxruntime is not installed).

    Returns:
        ``ExportReport`` with the maximum relative error per verified size.
    """
    model.eval()
    path = Path(path)
    sizes = _check_sizes(sizes)
    chans = _in_chans(model)
    with exportable(model):
        example_size, spatial, checks = _traced_plan(model, sizes, dynamic)
        example = torch.randn(2 if dynamic else 1, chans, *example_size)
        with torch.no_grad():
            out_ndim = model(example).dim()
        axes = None
        if dynamic:
            image_axes = {0: "batch"} | ({2: "height", 3: "width"} if spatial else {})
            out_axes = {0: "batch"} | (
                {2: "out_height", 3: "out_width"} if spatial and out_ndim == 4 else {}
            )
            axes = {"image": image_axes, "output": out_axes}
        with _quiet():
            torch.onnx.export(
                model, (example,), str(path), dynamo=False, opset_version=opset,
                input_names=["image"], output_names=["output"], dynamic_axes=axes,
            )
    report = ExportReport(path, "onnx", example_size, dynamic_spatial=spatial)
    try:
        import onnxruntime as ort
    except ImportError:
        verify = False
    if not verify:
        report.verified = False
        return report
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])

    def run(x: Tensor) -> Tensor:
        return torch.from_numpy(session.run(None, {"image": x.numpy()})[0])

    return _verify(report, run, model, checks)


def export_torchscript(
    model: nn.Module,
    path: str | os.PathLike,
    *,
    sizes: Sequence[Size | int] = ((224, 224), (233, 209)),
    dynamic: bool = True,
    verify: bool = True,
) -> ExportReport:
    """Trace ``model`` to TorchScript (``torch.jit.save``) and check the reloaded file.

    Traced at a size where every BRA layer pads (``dynamic=True``), so it runs at any batch and
    spatial size (fixed spatial size for ``BRA2d`` models). Returns an ``ExportReport``.
    """
    model.eval()
    path = Path(path)
    sizes = _check_sizes(sizes)
    chans = _in_chans(model)
    with exportable(model):
        example_size, spatial, checks = _traced_plan(model, sizes, dynamic)
        example = torch.randn(2, chans, *example_size)
        with _quiet(), torch.no_grad():
            traced = torch.jit.trace(model, (example,), check_trace=False)
            torch.jit.save(traced, str(path))
    report = ExportReport(path, "torchscript", example_size, dynamic_spatial=spatial)
    if not verify:
        report.verified = False
        return report
    with _quiet():
        loaded = torch.jit.load(str(path))
    return _verify(report, loaded, model, checks)


def export_program(
    model: nn.Module,
    path: str | os.PathLike,
    *,
    sizes: Sequence[Size | int] = ((224, 224), (233, 209)),
    dynamic: bool = True,
    verify: bool = True,
) -> ExportReport:
    """``torch.export`` the model (``torch.export.save`` to a ``.pt2`` file) and check it.

    Exported at the first size with batch 2 and ``Dim.AUTO`` batch/height/width, verified at
    every size with batch 2. The program is valid at the sizes whose padding pattern matches
    the first size's (see module notes); others appear in ``report.failures`` with the guard
    that refused them.
    """
    model.eval()
    path = Path(path)
    sizes = _check_sizes(sizes)
    chans = _in_chans(model)
    example = torch.randn(2, chans, *sizes[0])
    auto = torch.export.Dim.AUTO
    dims = ({0: auto, 2: auto, 3: auto},) if dynamic else None
    with exportable(model), torch.no_grad():
        program = torch.export.export(model, (example,), dynamic_shapes=dims)
    torch.export.save(program, str(path))
    report = ExportReport(path, "torch_export", sizes[0], dynamic_spatial=dynamic)
    if not verify:
        report.verified = False
        return report
    module = torch.export.load(str(path)).module()
    checks = _checks(sizes if dynamic else sizes[:1], [2] * len(sizes), chans)
    return _verify(report, module, model, checks)


def export_model(model: nn.Module, path: str | os.PathLike, *, format: str = "onnx",
                 **kwargs) -> ExportReport:
    """Dispatch to ``export_onnx``, ``export_torchscript`` or ``export_program``."""
    if format not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}, got {format!r}")
    if format == "onnx":
        return export_onnx(model, path, **kwargs)
    kwargs.pop("opset", None)
    if format == "torchscript":
        return export_torchscript(model, path, **kwargs)
    return export_program(model, path, **kwargs)
