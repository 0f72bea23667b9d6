"""``biformer viz``: a picture of where Bi-Level Routing Attention looks, for a real image.

For each query point and each BRA stage (its last block by default), a panel shows the query's
region, the regions it is routed to and the query token's attention over the routed tokens
(see ``biformer.viz.draw``). The Python side is ``biformer.viz.capture_routing`` (forward hooks,
no model copy) and ``biformer.viz.render_routing``.

    biformer viz                                   # astronaut photo, random biformer_tiny
    biformer viz --image cat.jpg --checkpoint biformer_tiny_best.pth --points 60,100 150,40
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from ..checkpoint import create_model, model_from_checkpoint
from ..engine.images import open_rgb
from ..engine.paths import check_output_file
from ..errors import CommandError, InputError, MissingFileError, require
from .capture import RoutingRecord, capture_routing
from .draw import RoutingPicture, render_routing

__all__ = [
    "add_arguments",
    "capture_routing",
    "default_points",
    "main",
    "prepare_image",
    "render_routing",
    "routing_picture",
    "select_records",
]

BUILTIN_IMAGES = ("astronaut", "chelsea", "coffee")
_DEFAULT_POINTS = ((0.23, 0.45), (0.31, 0.80), (0.74, 0.33))  # astronaut: face, shuttle, suit


def builtin_image(name: str) -> np.ndarray:
    """A photo shipped inside scikit-image (``astronaut``, ``chelsea``, ``coffee``)."""
    if name not in BUILTIN_IMAGES:
        raise InputError(f"unknown built-in image {name!r}; choose one of {BUILTIN_IMAGES}")
    data = require("skimage.data", "viz", f"the built-in image {name!r}")
    return np.ascontiguousarray(getattr(data, name)()[..., :3])


def prepare_image(pixels: np.ndarray, size: int) -> np.ndarray:
    """Resize the shorter side to ``size`` and centre-crop: ``[size, size, 3]`` uint8."""
    from PIL import Image

    if size < 32:
        raise InputError(f"--size must be at least 32 pixels, got {size}")
    img = Image.fromarray(np.asarray(pixels, dtype=np.uint8))
    w, h = img.size
    scale = size / min(w, h)
    nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
    img = img.resize((nw, nh), Image.Resampling.BICUBIC)
    left, top = (nw - size) // 2, (nh - size) // 2
    return np.asarray(img.crop((left, top, left + size, top + size)))


def to_tensor(pixels: np.ndarray, model: torch.nn.Module) -> torch.Tensor:
    """``[H, W, 3]`` uint8 -> ``[1, 3, H, W]`` normalised with the model's mean/std."""
    cfg = getattr(model, "pretrained_cfg", None) or {}
    mean = torch.tensor(cfg.get("mean", (0.485, 0.456, 0.406))).view(1, 3, 1, 1)
    std = torch.tensor(cfg.get("std", (0.229, 0.224, 0.225))).view(1, 3, 1, 1)
    x = torch.from_numpy(np.array(pixels, dtype=np.uint8)).permute(2, 0, 1)[None].float() / 255.0
    return (x - mean) / std


def default_points(size: int) -> list[tuple[int, int]]:
    """Three query pixels (face, shuttle and suit on the astronaut photo) for a square image."""
    return [(int(fy * size), int(fx * size)) for fy, fx in _DEFAULT_POINTS]


def select_records(records: Sequence[RoutingRecord], blocks: str = "last") -> list[RoutingRecord]:
    """``"last"``: the last block of each stage; ``"all"``: every BRA layer."""
    if blocks == "all":
        return list(records)
    if blocks != "last":
        raise InputError(f"blocks must be 'last' or 'all', got {blocks!r}")
    last: dict[int, RoutingRecord] = {}
    for rec in records:
        last[rec.stage] = rec  # records are in forward order
    return list(last.values())


def routing_picture(
    model: torch.nn.Module,
    pixels: np.ndarray,
    points: Sequence[tuple[int, int]],
    *,
    blocks: str = "last",
    zoom: int = 2,
) -> tuple[RoutingPicture, list[RoutingRecord]]:
    """Capture the routing of ``model`` on ``pixels`` (``[H, W, 3]`` uint8) and draw it.

    Returns the picture and all captured records (the drawn ones are ``picture.panels``).
    """
    h, w = pixels.shape[:2]
    for y, x in points:
        if not (0 <= y < h and 0 <= x < w):
            raise InputError(f"point ({y},{x}) lies outside the {h}x{w} image (y,x in pixels)")
    model.eval()
    records = capture_routing(model, to_tensor(pixels, model), keep_qk=True)
    chosen = select_records(records, blocks)
    return render_routing(pixels, chosen, points, zoom=zoom), records


def _point(text: str) -> tuple[int, int]:
    try:
        y, x = (int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"a point is 'y,x' in pixels of the resized image, got {text!r}"
        ) from None
    return y, x


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--image", default="astronaut",
                        help="image file, or a photo inside scikit-image: "
                             f"{', '.join(BUILTIN_IMAGES)} (default: astronaut)")
    parser.add_argument("--model", default=None,
                        help="BiFormer model name (default: the checkpoint's, or biformer_tiny)")
    parser.add_argument("--checkpoint", default=None,
                        help="weights: our checkpoint or an official one (default: random)")
    parser.add_argument("--points", nargs="+", type=_point, default=None, metavar="Y,X",
                        help="query pixels in the resized image (default: three points)")
    parser.add_argument("--size", type=int, default=224, help="image side in pixels")
    parser.add_argument("--n-win", type=int, default=None,
                        help="regions per side (default: the model's, 7)")
    parser.add_argument("--blocks", choices=("last", "all"), default="last",
                        help="panels for the last block of each stage, or every block")
    parser.add_argument("--zoom", type=int, default=2, help="panel upscaling")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random weights")
    parser.add_argument("--out", default="routing.png", help="output PNG")


def read_image(path: str) -> np.ndarray:
    """The RGB pixels ``[H, W, 3]`` uint8 of an image file (16-bit images scaled)."""
    if not Path(path).exists():
        raise MissingFileError(f"image file not found: {path}")
    if Path(path).is_dir():
        raise InputError(f"{path} is a directory, not an image file")
    try:
        return np.asarray(open_rgb(path))
    except (OSError, ValueError, SyntaxError) as err:
        raise InputError(f"{path} is not an image PIL can read ({type(err).__name__}); pass a "
                         "PNG/JPEG file") from None


def _model(args: argparse.Namespace) -> torch.nn.Module:
    """The model to look at: from the checkpoint, else random weights (seeded)."""
    overrides: dict = {"auto_pad": True}
    if args.n_win is not None:
        if not 1 <= args.n_win <= args.size // 4:
            raise InputError(f"--n-win {args.n_win}: use 1 to {args.size // 4}, the tokens per "
                             f"side of the first stage at --size {args.size} (more regions "
                             "than tokens only pads the map)")
        overrides["n_win"] = args.n_win
    if args.checkpoint:
        return model_from_checkpoint(args.checkpoint, model=args.model,
                                     default_model="biformer_tiny", **overrides)[0]
    return create_model(args.model or "biformer_tiny", **overrides)


def main(args: argparse.Namespace) -> int:
    out = check_output_file(args.out, suffixes=(".png",))
    require("matplotlib", "viz", "biformer viz")
    if args.image in BUILTIN_IMAGES and not Path(args.image).exists():
        pixels = builtin_image(args.image)
    else:
        pixels = read_image(args.image)
    pixels = prepare_image(pixels, args.size)
    torch.manual_seed(args.seed)
    model = _model(args)
    points = args.points or default_points(args.size)
    picture, records = routing_picture(model, pixels, points, blocks=args.blocks, zoom=args.zoom)
    try:
        picture.save(out)
    except OSError as err:
        raise CommandError(f"cannot write {args.out}: {err.strerror or err}") from None
    for place in picture.panels:
        rec = place.record
        region = rec.region_of_pixel(*place.point)
        print(f"query {place.point} stage {rec.stage} block {rec.block}: region {region} -> "
              f"routed {rec.routed(region)}")
    h, w = picture.pixels.shape[:2]
    print(f"wrote {out} ({w}x{h} px, {len(records)} BRA layers captured)")
    return 0
