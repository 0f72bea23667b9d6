"""The layers that YOLO model YAMLs name: a BRA attention layer and BRA-carrying C2f/C3k2 blocks.

Nothing here imports ultralytics: the blocks are ultralytics' own ``C2f``/``C3k2`` modules (built
by ultralytics from the YAML row) whose inner blocks are each followed by a ``BRA`` layer, the
structure ultralytics itself uses for ``C3k2(attn=True)`` (a bottleneck, then an attention block).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

from torch import Tensor, nn

from ...layers import BRA2d

__all__ = ["BRA", "BRAOptions", "attach_bra", "bra_layers"]


@dataclass(frozen=True)
class BRAOptions:
    """Settings of one BRA layer (the optional mapping at the end of a YAML row's arguments).

    Args:
        n_win: regions per side for maps whose size is a multiple of it (BRA2d semantics: the
            region size is ``max(H // n_win, 1) x max(W // n_win, 1)`` and any other size is
            padded to whole regions). 5 divides the P3/P4/P5 maps of every image size that is a
            multiple of 160 (P5 of 640 is 20x20: 25 regions of 4x4 tokens).
        topk: key regions each query region attends to (at most ``n_win ** 2``; on maps smaller
            than ``n_win`` it is clamped to the number of regions, see ``BRA``).
        head_dim: channels per attention head: ``heads = channels // head_dim``.
        residual: ``x + attention(x)`` (True) or ``attention(x)`` (False).
    """

    n_win: int = 5
    topk: int = 4
    head_dim: int = 32
    residual: bool = True

    @classmethod
    def from_mapping(cls, values: dict, where: str) -> BRAOptions:
        """Options from a YAML mapping; unknown keys or non-integers raise naming ``where``."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"{where}: unknown BRA option(s) {unknown}; the options are "
                             f"{sorted(known)}")
        for key in ("n_win", "topk", "head_dim"):
            value = values.get(key, 1)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{where}: {key} must be a positive integer, got {value!r}")
        if not isinstance(values.get("residual", True), bool):
            raise ValueError(f"{where}: residual must be true or false, "
                             f"got {values['residual']!r}")
        return cls(**values)

    def heads(self, channels: int, where: str) -> int:
        """Attention heads for ``channels``; ValueError naming ``where`` unless they divide."""
        if channels % self.head_dim or channels < self.head_dim:
            fits = [d for d in (8, 16, 24, 32, 48, 64) if channels % d == 0]
            raise ValueError(
                f"{where}: {channels} channels are not a multiple of head_dim={self.head_dim}; "
                f"set head_dim to one of {fits or 'the divisors of ' + str(channels)} in the "
                "row's BRA options, or change the YAML channels or width"
            )
        return channels // self.head_dim


class BRA(nn.Module):
    """Bi-Level Routing Attention for a YOLO feature map, keeping its channel count.

    ``BRA2d`` (the official NCHW semantics) with ``channels // head_dim`` heads, on any H and W
    (odd sizes are padded to whole regions and cropped back). For maps smaller than ``n_win``
    (e.g. P5 of a 128-pixel image, or the small probe images ultralytics runs for strides and
    FLOPs) every token is its own region and ``topk`` is clamped to the number of regions: the
    layer then attends to the whole map instead of failing on a size ultralytics chose.

    Args:
        channels: input and output channels (given by the YAML parser, never written in YAMLs).
        options: ``BRAOptions`` (n_win, topk, head_dim, residual).

    Shape:
        ``[B, channels, H, W]`` -> ``[B, channels, H, W]`` (NCHW).
    """

    def __init__(self, channels: int, options: BRAOptions | None = None):
        super().__init__()
        options = options or BRAOptions()
        heads = options.heads(channels, type(self).__name__)
        self.channels = channels
        self.options = asdict(options)
        self.residual = options.residual
        self.attn = BRA2d(channels, num_heads=heads, n_win=options.n_win, topk=options.topk,
                          auto_pad=True)

    def extra_repr(self) -> str:
        o = self.options
        return (f"channels={self.channels}, heads={self.attn.num_heads}, n_win={o['n_win']}, "
                f"topk={o['topk']}, residual={self.residual}")

    def forward(self, x: Tensor) -> Tensor:
        """``[B, C, H, W]`` -> ``[B, C, H, W]``: ``x + BRA2d(x)`` or ``BRA2d(x)``."""
        y = self.attn(x)
        return x + y if self.residual else y

    def __setstate__(self, state: dict) -> None:
        # A model unpickled from a checkpoint may be rebuilt from its YAML (resume, fine-tuning):
        # make our YAML names known to ultralytics in this process too.
        super().__setstate__(state)
        from .registration import register_quietly

        register_quietly()


def attach_bra(block: nn.Module, options: BRAOptions, where: str) -> nn.Module:
    """Follow every inner block of an ultralytics ``C2f``/``C3k2`` with a ``BRA`` layer.

    ``block.m`` (its ``ModuleList`` of bottlenecks, each ``[B, c, H, W]`` -> same, with
    ``c = block.c`` hidden channels) becomes ``Sequential(bottleneck, BRA(c))`` per entry.
    Returns ``block`` (changed in place); ValueError naming ``where`` if ``c`` does not fit
    ``options.head_dim``.
    """
    inner = getattr(block, "m", None)
    hidden = getattr(block, "c", None)
    if not isinstance(inner, nn.ModuleList) or not isinstance(hidden, int):
        raise TypeError(f"{where}: {type(block).__name__} has no C2f layout (.m, .c); this "
                        "ultralytics version is not supported by biformer's BRA blocks")
    options.heads(hidden, where)
    for j, module in enumerate(inner):
        inner[j] = nn.Sequential(module, BRA(hidden, options))
    return block


def bra_layers(model: nn.Module) -> list[BRA]:
    """Every ``BRA`` layer of ``model``, in module order."""
    return [m for m in model.modules() if isinstance(m, BRA)]
