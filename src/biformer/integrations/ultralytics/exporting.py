"""ONNX export of YOLO models with BRA layers through ultralytics, checked with onnxruntime.

``YOLO.export(format="onnx")`` traces the model; while it does, biformer's backend dispatch
runs every BRA layer on the ``reference`` backend (plain topk/gather/matmul/softmax ops, the
only exportable one), as ``biformer export`` does, and the default backend again afterwards.
The traced graph has a fixed image size (BRA's region grid is computed from the size in Python;
ultralytics exports ``dynamic=False`` by default), any batch size only with ``dynamic=True``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from ...export import relative_error

__all__ = ["OnnxCheck", "export_onnx", "onnx_parity"]


@dataclass
class OnnxCheck:
    """An exported file and how closely onnxruntime reproduces PyTorch on it."""

    path: Path
    imgsz: tuple[int, int]
    max_relative_error: float


def _pytorch_output(model: torch.nn.Module, images: torch.Tensor) -> torch.Tensor:
    """The decoded predictions ``[N, 4 + classes, anchors]`` of an ultralytics detector."""
    model.eval()
    with torch.no_grad():
        out = model(images)
    return out[0] if isinstance(out, (list, tuple)) else out


def onnx_parity(model: torch.nn.Module, path: str | Path, imgsz: tuple[int, int],
                *, seed: int = 0) -> float:
    """``max|ort - torch| / max|torch|`` of the ONNX file against ``model`` on a random image.

    ``model`` is the PyTorch detection model (``YOLO(...).model``); the input is a
    ``[1, 3, H, W]`` float image in [0, 1] at the export size ``imgsz = (H, W)``.
    """
    import onnxruntime as ort

    gen = torch.Generator().manual_seed(seed)
    images = torch.rand(1, 3, *imgsz, generator=gen)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    exported = torch.from_numpy(session.run(None, {name: images.numpy()})[0])
    return relative_error(exported, _pytorch_output(model, images))


def export_onnx(yolo, imgsz: int | tuple[int, int], **export_args) -> OnnxCheck:
    """``yolo.export(format="onnx", imgsz=imgsz, simplify=False, ...)``, then ``onnx_parity``.

    ``simplify=False`` by default: ultralytics' simplifier is an extra package it would try to
    install. Returns an ``OnnxCheck``.
    """
    size = (imgsz, imgsz) if isinstance(imgsz, int) else tuple(imgsz)
    export_args = {"simplify": False, **export_args}
    path = Path(yolo.export(format="onnx", imgsz=list(size), **export_args))
    return OnnxCheck(path, size, onnx_parity(yolo.model, path, size))
