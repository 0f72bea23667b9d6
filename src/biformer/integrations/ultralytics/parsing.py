"""Building YOLO models whose YAML rows name our layers, around ultralytics' own ``parse_model``.

ultralytics resolves every YAML row itself (names, channel and depth scaling per model scale,
activation, restricted loading). Our rows are handed to it as rows of its own modules, so that
all of that stays ultralytics' work, and are then completed:

- ``C2f_BRA`` / ``C3k2_BRA`` rows are given to ultralytics as ``C2f`` / ``C3k2`` with the same
  arguments (minus our options), so their output channels, repeats and per-scale flags are
  exactly ultralytics'; each inner block of the built module is then followed by a ``BRA``.
- ``BRA`` rows keep the channel count: they are given as ``nn.Identity`` (channels pass through)
  and a ``nn.BatchNorm2d`` probe row appended after the head reads their input channel count from
  ultralytics' channel list; the probe is dropped and the identity replaced by ``BRA``.

Our rows take an optional mapping as their last argument (``{n_win: 5, topk: 4, head_dim: 32,
residual: true}``); missing keys use ``BRAOptions``' defaults.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

from .modules import BRA, BRAOptions, attach_bra

__all__ = ["YAML_MODULES", "build_with_bra", "has_bra_rows"]

# YAML name -> the ultralytics module its row is built as (None: a channel-keeping BRA layer).
YAML_MODULES: dict[str, str | None] = {"BRA": None, "C2f_BRA": "C2f", "C3k2_BRA": "C3k2"}

ParseModel = Callable[..., tuple[nn.Sequential, list[int]]]


@dataclass
class _OurRow:
    """One row of the YAML that names our module."""

    index: int
    name: str
    options: BRAOptions
    probe: int | None = None  # index of its channel probe in the stand-in model (BRA rows)

    @property
    def where(self) -> str:
        return f"model YAML layer {self.index} ({self.name})"


def _rows(d: dict) -> list[list]:
    return list(d.get("backbone", [])) + list(d.get("head", []))


def has_bra_rows(d: dict) -> bool:
    """Whether the model dict has a row naming one of ``YAML_MODULES``."""
    return any(len(row) > 2 and row[2] in YAML_MODULES for row in _rows(d))


def _split_args(row: list, where: str) -> tuple[list, BRAOptions]:
    """``(ultralytics arguments, options)`` of one of our rows."""
    args = list(row[3]) if len(row) > 3 and row[3] is not None else []
    values = args.pop() if args and isinstance(args[-1], dict) else {}
    if any(isinstance(a, dict) for a in args):
        raise ValueError(f"{where}: the BRA options mapping must be the last argument, got {args}")
    options = BRAOptions.from_mapping(values, where)
    if options.topk > options.n_win**2:
        raise ValueError(f"{where}: topk={options.topk} exceeds the n_win**2={options.n_win**2} "
                         "regions of a map; lower topk or raise n_win")
    return args, options


def _stand_in(d: dict) -> tuple[dict, list[_OurRow]]:
    """A copy of ``d`` whose rows are all ultralytics modules, and our rows' plans."""
    rows, ours, probes = _rows(d), [], []
    built = []
    for i, row in enumerate(rows):
        if len(row) < 4 or row[2] not in YAML_MODULES:
            built.append(copy.deepcopy(row))
            continue
        source, repeats, name = row[0], row[1], row[2]
        plan = _OurRow(i, name, BRAOptions())
        args, plan.options = _split_args(row, plan.where)
        if not isinstance(source, int):
            raise ValueError(f"{plan.where}: takes one input, got from={source!r}")
        if YAML_MODULES[name] is None:
            if args:
                raise ValueError(
                    f"{plan.where}: BRA takes no channel or positional arguments (it keeps its "
                    f"input's channels), got {args}; give options as a mapping, e.g. "
                    "[{n_win: 5, topk: 4}]"
                )
            plan.probe = len(rows) + len(probes)
            probes.append([source if source >= 0 else i + source, 1, "nn.BatchNorm2d", []])
            built.append([source, repeats, "nn.Identity", []])
        else:
            built.append([source, repeats, YAML_MODULES[name], args])
        ours.append(plan)
    n_backbone = len(d.get("backbone", []))
    stand_in = dict(d, backbone=built[:n_backbone], head=built[n_backbone:] + probes)
    return stand_in, ours


def _save_list(rows: list[list]) -> list[int]:
    """Indices of the layers whose outputs later rows read (other than the previous one)."""
    save = set()
    for i, row in enumerate(rows):
        for source in [row[0]] if isinstance(row[0], int) else row[0]:
            if source != -1:
                save.add(source if source >= 0 else i + source)
    return sorted(save)


def _complete(plan: _OurRow, layer: nn.Module, layers: list[nn.Module]) -> nn.Module:
    """Our module for ``plan`` from the ultralytics module built in its place."""
    if plan.probe is None:
        block = attach_bra(layer, plan.options, plan.where)
    else:
        channels = layers[plan.probe].num_features
        plan.options.heads(channels, f"{plan.where}, input of {channels} channels")
        repeats = len(layer) if isinstance(layer, nn.Sequential) else 1
        made = [BRA(channels, plan.options) for _ in range(repeats)]
        block = made[0] if repeats == 1 else nn.Sequential(*made)
    block.i, block.f, block.type = layer.i, layer.f, plan.name
    block.np = sum(p.numel() for p in block.parameters())
    return block


def _log_table(model: nn.Sequential, ours: list[_OurRow]) -> None:
    from ultralytics.utils import LOGGER

    detail = {p.index: p.options for p in ours}
    LOGGER.info(f"\n{'#':>3} {'from':>16} {'params':>10}  module")
    for m in model:
        kind = str(m.type).rsplit(".", 1)[-1]
        extra = ""
        if m.i in detail:
            o = detail[m.i]
            extra = f"  n_win={o.n_win} topk={o.topk} head_dim={o.head_dim}"
            extra += f" residual={o.residual}" if m.type == "BRA" else ""
        LOGGER.info(f"{m.i:>3} {m.f!s:>16} {m.np:>10,}  {kind}{extra}")


def build_with_bra(original: ParseModel, d: dict, ch: int, verbose: bool = True
                   ) -> tuple[nn.Sequential, list[int]]:
    """``parse_model`` for model dicts with our rows (others go to ``original`` unchanged).

    Returns ``(nn.Sequential of the layers, save list)`` like ultralytics' ``parse_model``.
    """
    if not has_bra_rows(d):
        return original(d, ch, verbose=verbose)
    stand_in, ours = _stand_in(d)
    built, _ = original(stand_in, ch, verbose=False)
    layers = list(built)
    for plan in ours:
        layers[plan.index] = _complete(plan, layers[plan.index], layers)
    rows = _rows(d)
    model = nn.Sequential(*layers[: len(rows)])
    if verbose:
        _log_table(model, ours)
    return model, _save_list(rows)
