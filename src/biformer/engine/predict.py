"""``biformer predict IMAGE...``: the top-k classes of each image.

Class names: those saved in our checkpoints, else ImageNet's (``timm.data.ImageNetInfo``) for a
1000-class model, else ``class <index>``. Images are read with ``engine.images.open_rgb``
(16-bit and float images scaled to 8 bits, not clipped).
"""

from __future__ import annotations

import argparse
import json
import os

import torch
from PIL import Image

from ..checkpoint import check_model_name, model_from_checkpoint, parse_model_kwargs
from ..errors import CommandError
from .distributed import resolve_device
from .evaluate import model_data_config
from .images import open_rgb
from .transforms import create_eval_transform

__all__ = ["add_arguments", "class_names_for", "main"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("images", nargs="+", metavar="IMAGE", help="image files")
    parser.add_argument("--checkpoint", metavar="PATH", default=None,
                        help="weights (official, ours or timm's); without it the model's "
                        "pretrained weights are downloaded")
    parser.add_argument("--model", metavar="NAME", default=None,
                        help="model name (default: recorded in our checkpoints, else "
                        "biformer_small)")
    parser.add_argument("--model-kwargs", nargs="*", metavar="KEY=VALUE", default=None,
                        help="model constructor options (default: recorded in our checkpoints)")
    parser.add_argument("--num-classes", type=int, default=None,
                        help="classifier size (default: recorded, else the checkpoint's)")
    parser.add_argument("--ema", action="store_true", help="use the checkpoint's EMA weights")
    parser.add_argument("--topk", type=int, default=5, help="classes shown per image (default 5)")
    parser.add_argument("--device", default=None, help="cuda or cpu (default: cuda if available)")
    parser.add_argument("--json", action="store_true", help="one JSON object per image")


def class_names_for(num_classes: int, saved: list[str] | None) -> list[str]:
    """Saved names, else ImageNet-1k descriptions for 1000 classes, else ``class <i>``."""
    if saved and len(saved) == num_classes:
        return list(saved)
    if num_classes == 1000:
        from timm.data import ImageNetInfo

        info = ImageNetInfo()
        return [info.index_to_description(i) for i in range(num_classes)]
    return [f"class {i}" for i in range(num_classes)]


def _open_image(path: str) -> Image.Image:
    if not os.path.exists(path):
        raise CommandError(f"{path}: no such file")
    if os.path.isdir(path):
        raise CommandError(f"{path} is a directory, not an image")
    try:
        return open_rgb(path)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as err:
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise CommandError(f"{path} is not a readable image ({reason})") from None


def _build(args: argparse.Namespace):
    kwargs = None if args.model_kwargs is None else parse_model_kwargs(args.model_kwargs)
    if args.checkpoint:
        return model_from_checkpoint(
            args.checkpoint, model=args.model, model_kwargs=kwargs, num_classes=args.num_classes,
            use_ema=args.ema, default_model="biformer_small", biformer_only=False,
        )
    name = args.model or "biformer_small"
    check_model_name(name, biformer_only=False)
    import timm

    try:
        model = timm.create_model(name, pretrained=True, **(kwargs or {}))
    except Exception as err:  # noqa: BLE001 - download or cache failures come in many types
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CommandError(
            f"no weights for {name}: pass --checkpoint PATH (getting the pretrained weights "
            f"failed: {first[:160]})"
        ) from None
    return model, {}


def main(args: argparse.Namespace) -> int:
    if args.topk < 1:
        raise CommandError(f"--topk must be >= 1, got {args.topk}")
    device = resolve_device(args.device)
    images = [_open_image(p) for p in args.images]  # fail on a bad file before loading a model
    model, record = _build(args)
    model.to(device).eval()
    transform = create_eval_transform(model_data_config(model, record, None))
    num_classes = int(getattr(model, "num_classes", 0) or 0)
    if num_classes < 1:
        raise CommandError("the model has no classifier (num_classes=0)")
    names = class_names_for(num_classes, record.get("class_names"))
    k = min(args.topk, num_classes)
    with torch.no_grad():
        batch = torch.stack([transform(img) for img in images]).to(device)  # B, C, H, W
        probs = model(batch).float().softmax(dim=-1)
        top_p, top_i = probs.topk(k, dim=-1)
    for path, p_row, i_row in zip(args.images, top_p.tolist(), top_i.tolist(), strict=True):
        ranked = [{"index": i, "name": names[i], "prob": p}
                  for p, i in zip(p_row, i_row, strict=True)]
        if args.json:
            print(json.dumps({"image": path, "top": ranked}))
        else:
            print(path)
            for r in ranked:
                print(f"  {100 * r['prob']:6.2f}%  {r['index']:>4d}  {r['name']}")
    return 0
