"""``biformer export``: a BiFormer model as ONNX, TorchScript or a ``torch.export`` program.

    biformer export --model biformer_tiny --checkpoint best.pth --format onnx --out tiny.onnx

The file is verified against the eager model at ``--size`` and at an odd size (onnxruntime for
ONNX); see ``biformer.export`` for how dynamic sizes are traced.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from torch import nn

from .checkpoint import create_model, model_from_checkpoint
from .engine.paths import check_output_file
from .errors import CommandError, InputError, require
from .export import FORMATS, SUFFIXES, TOLERANCE, ExportReport, export_model, odd_size

__all__ = ["add_arguments", "main"]

OPSETS = (13, 20)  # the TorchScript-based exporter's range that our graphs (topk, gather) need


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default=None,
                        help="BiFormer model name (default: the checkpoint's, or biformer_tiny)")
    parser.add_argument("--checkpoint", default=None,
                        help="weights: our checkpoint or an official one (default: random)")
    parser.add_argument("--format", choices=FORMATS, default="onnx", help="output format")
    parser.add_argument("--size", type=int, default=224,
                        help="image side to export and verify at (also verified at an odd size)")
    parser.add_argument("--n-win", type=int, default=None, help="regions per side override")
    parser.add_argument("--opset", type=int, default=17,
                        help=f"ONNX opset ({OPSETS[0]} to {OPSETS[1]}, default 17)")
    parser.add_argument("--static", action="store_true",
                        help="fixed batch 1 and --size only (no dynamic axes)")
    parser.add_argument("--out", default=None,
                        help="output file (default: MODEL.onnx / MODEL.pt / MODEL.pt2)")


def _check(args: argparse.Namespace) -> Path:
    out = Path(args.out) if args.out else Path(f"{args.model or 'model'}"
                                                f"{SUFFIXES[args.format]}")
    check_output_file(out, suffixes=() if args.format == "torchscript"
                      else (SUFFIXES[args.format],))
    if args.size < 48:
        raise InputError(f"--size must be at least 48 pixels, got {args.size}")
    if args.format == "onnx":
        require("onnx", "export", "ONNX export")
        if not OPSETS[0] <= args.opset <= OPSETS[1]:
            raise InputError(f"--opset {args.opset}: use {OPSETS[0]} to {OPSETS[1]} (the ops of "
                             "the BRA graph need opset 13 or later)")
    if args.n_win is not None and args.n_win < 1:
        raise InputError(f"--n-win must be >= 1, got {args.n_win}")
    return out


def _model(args: argparse.Namespace) -> nn.Module:
    overrides: dict = {"auto_pad": True}
    if args.n_win is not None:
        overrides["n_win"] = args.n_win
    if args.checkpoint:
        return model_from_checkpoint(args.checkpoint, model=args.model,
                                     default_model="biformer_tiny", **overrides)[0]
    return create_model(args.model or "biformer_tiny", **overrides)


def _print(report: ExportReport, args: argparse.Namespace, sizes) -> None:
    shapes = "static shapes" if args.static else (
        "dynamic batch and size" if report.dynamic_spatial
        else "dynamic batch; size fixed (BRA2d layers)")
    print(f"wrote {report.path} ({args.format}, traced at {report.example_size[0]}x"
          f"{report.example_size[1]}, {shapes})")
    if not report.verified:
        print("not verified: onnxruntime is not installed (pip install 'biformer[export]')")
        return
    for (h, w), err in report.errors.items():
        print(f"  {h}x{w}: max relative error vs PyTorch {err:.2e}")
    for (h, w), why in report.failures.items():
        print(f"  {h}x{w}: does not run: {why}")
    if args.format == "torch_export" and report.failures and sizes[0] not in report.failures:
        print("  note: torch.export keeps the BRA padding branch as a guard; the program runs at "
              f"sizes padded like {sizes[0][0]}x{sizes[0][1]} (ONNX and TorchScript run at any "
              "size)")
        report.failures.clear()


def main(args: argparse.Namespace) -> int:
    out = _check(args)
    model = _model(args)
    sizes = [(args.size, args.size), odd_size(args.size)]
    try:
        report = export_model(model, out, format=args.format, sizes=sizes,
                              dynamic=not args.static, opset=args.opset)
    except OSError as err:
        raise CommandError(f"cannot write {out}: {err.strerror or err}") from None
    _print(report, args, sizes)
    if report.verified and not report.ok():
        raise CommandError(
            f"{report.path} does not match PyTorch within {TOLERANCE:g} at every size "
            f"(max error {report.max_error:.2e}, failures at {sorted(report.failures)})")
    return 0
