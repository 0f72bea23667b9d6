"""``biformer convert CHECKPOINT --out DIR``: the timm / Hugging Face folder layout.

    biformer convert biformer_small_best.pth --model biformer_small --out biformer_small_in1k
    python -c "import timm, biformer; timm.create_model('local-dir:biformer_small_in1k',
               pretrained=True)"

Writes ``DIR/config.json`` (architecture, number of classes, constructor options, pretrained
cfg) and ``DIR/model.safetensors``; ``timm.models.push_to_hf_hub`` uploads the same layout.
"""

from __future__ import annotations

import argparse

from .building import parse_model_kwargs
from .hub import WEIGHTS_NAME, convert

__all__ = ["add_arguments", "main"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", metavar="CHECKPOINT",
                        help="an official BiFormer file, ours or timm's (.pth/.safetensors)")
    parser.add_argument("--out", metavar="DIR", required=True,
                        help="folder to write config.json and model.safetensors into")
    parser.add_argument("--model", metavar="NAME", default=None,
                        help="model name (needed for official files: e.g. biformer_small)")
    parser.add_argument("--model-kwargs", nargs="*", metavar="KEY=VALUE", default=None,
                        help="model constructor options (default: recorded in our checkpoints)")
    parser.add_argument("--ema", action="store_true", help="convert the EMA weights")


def main(args: argparse.Namespace) -> int:
    kwargs = None if args.model_kwargs is None else parse_model_kwargs(args.model_kwargs)
    out = convert(args.checkpoint, args.out, model=args.model, model_kwargs=kwargs,
                  use_ema=args.ema)
    print(f"wrote {out}/config.json and {out}/{WEIGHTS_NAME}; load it with "
          f"timm.create_model('local-dir:{out}', pretrained=True)")
    return 0
