"""``biformer info``: parameters and MACs of every model, counted, next to the paper's table.

The paper's numbers come from ``biformer.models.MODEL_SPECS`` (one entry per registered model).

MACs are counted by ``torch.utils.flop_counter.FlopCounterMode`` (FLOPs / 2: one multiply-add
per MAC) over one forward pass of a ``1 x 3 x S x S`` input, with the ``reference`` attention
backend so that every attention matrix product is visible to the counter. The model is built on
the ``meta`` device: shapes only, no memory and no arithmetic, so the count takes a second.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict, dataclass

import timm
import torch
from torch.utils.flop_counter import FlopCounterMode

from ..errors import CommandError
from ..ops import use_backend
from .specs import MODEL_SPECS

__all__ = ["ModelCost", "add_arguments", "count_cost", "main"]


@dataclass(frozen=True)
class ModelCost:
    """Counted size and cost of one model at ``img_size x img_size``."""

    model: str
    params_m: float
    gmacs: float
    img_size: int
    paper_params_m: float | None
    paper_gmacs: float | None
    paper_top1: float | None


def count_cost(name: str, *, img_size: int = 224) -> ModelCost:
    """Parameters (millions) and GMACs of ``name`` at ``img_size``, counted on the meta device."""
    with torch.device("meta"):
        model = timm.create_model(name).eval()
        x = torch.empty(1, model.in_chans, img_size, img_size)
    params = sum(p.numel() for p in model.parameters())
    with torch.no_grad(), use_backend("reference"), FlopCounterMode(display=False) as counter:
        model(x)
    spec = MODEL_SPECS.get(name)
    paper = (spec.params_m, spec.gmacs, spec.top1) if spec else (None, None, None)
    return ModelCost(name, params / 1e6, counter.get_total_flops() / 2e9, img_size, *paper)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    names = list(MODEL_SPECS)
    parser.add_argument("--models", nargs="+", metavar="NAME", default=names,
                        help=f"models to count (default: all: {', '.join(names)})")
    parser.add_argument("--img-size", type=int, default=224,
                        help="square input side for the MAC count (default 224, the paper's)")
    parser.add_argument("--json", action="store_true", help="print a JSON list instead of a table")


def _table(rows: list[ModelCost]) -> str:
    header = f"{'model':<20} {'params (M)':>10} {'GMACs':>7} {'paper params (M)':>17} " \
             f"{'paper GMACs':>12} {'paper top-1':>12}"
    lines = [header, "-" * len(header)]
    for r in rows:
        paper = [f"{v:.1f}" if v is not None else "-"
                 for v in (r.paper_params_m, r.paper_gmacs, r.paper_top1)]
        lines.append(f"{r.model:<20} {r.params_m:>10.3f} {r.gmacs:>7.3f} {paper[0]:>17} "
                     f"{paper[1]:>12} {paper[2]:>12}")
    lines.append(f"MACs at {rows[0].img_size}x{rows[0].img_size}, batch 1, counted by "
                 "torch.utils.flop_counter (FLOPs / 2).")
    return "\n".join(lines)


def main(args: argparse.Namespace) -> int:
    unknown = [m for m in args.models if m not in MODEL_SPECS]
    if unknown:
        raise CommandError(f"unknown model(s) {unknown}; choose from {list(MODEL_SPECS)}")
    if args.img_size < 32:
        raise CommandError(f"--img-size must be at least 32, got {args.img_size}")
    try:
        rows = [count_cost(name, img_size=args.img_size) for name in args.models]
    except ValueError as err:  # e.g. a size that the routed stages cannot split
        raise CommandError(f"cannot count at {args.img_size}x{args.img_size}: {err}") from None
    if args.json:
        print(json.dumps([asdict(r) for r in rows], indent=2))
    else:
        print(_table(rows))
    return 0
