"""The stage container and the per-stage options every BiFormer family shares."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

__all__ = ["NUM_STAGES", "BiFormerStage", "drop_path_rates", "stage_strides", "stage_tuple"]

NUM_STAGES = 4


def stage_tuple(value: Any, name: str, *, names: Sequence[str] = ()) -> tuple[Any, ...]:
    """An int (same for every stage) or one value per stage -> a 4-tuple.

    Values are ints (not bools); with ``names``, also one of those strings.
    """

    def ok(v: Any) -> bool:
        return (isinstance(v, int) and not isinstance(v, bool)) or (
            isinstance(v, str) and v in names)

    if isinstance(value, bool):
        raise TypeError(f"{name} must be an int or a sequence of {NUM_STAGES} ints, got {value!r}")
    if ok(value):
        return (value,) * NUM_STAGES
    if isinstance(value, Sequence) and not isinstance(value, str):
        values = tuple(value)
        if len(values) == NUM_STAGES and all(ok(v) for v in values):
            return values
    raise ValueError(
        f"{name} must be an int or a sequence of {NUM_STAGES} ints (one per stage), got {value!r}"
    )


def stage_strides(output_stride: int) -> tuple[int, ...]:
    """Strides of the downsampling of stages 1..3 for ``output_stride`` 32, 16 or 8."""
    strides = {32: (2, 2, 2), 16: (2, 2, 1), 8: (2, 1, 1)}.get(output_stride)
    if strides is None:
        raise ValueError(
            f"output_stride must be 32 (classification), 16 or 8 (dense prediction: the last one "
            f"or two downsamplings keep the resolution), got {output_stride!r}"
        )
    return strides


def drop_path_rates(depths: Sequence[int], drop_path_rate: float) -> list[list[float]]:
    """Stochastic depth rising linearly from 0 to ``drop_path_rate`` over all blocks, per stage."""
    if not 0.0 <= drop_path_rate < 1.0:
        raise ValueError(f"drop_path_rate must be in [0, 1), got {drop_path_rate}")
    total = sum(depths)
    rates = [drop_path_rate * i / (total - 1) if total > 1 else 0.0 for i in range(total)]
    out, start = [], 0
    for depth in depths:
        out.append(rates[start : start + depth])
        start += depth
    return out


class BiFormerStage(nn.Module):
    """One resolution stage: ``downsample`` then ``blocks``; NCHW in, NCHW out.

    With ``channels_last_blocks=True`` the blocks take ``[B, H, W, C]`` tensors: the stage
    permutes once before the first block (a copy only if the input is not channels_last) and
    once after the last one (a free view: the output is an NCHW tensor in channels_last memory
    format, which the next stage's convolutions keep).
    """

    def __init__(self, downsample: nn.Module, blocks: Sequence[nn.Module], *,
                 channels_last_blocks: bool):
        super().__init__()
        self.downsample = downsample
        self.blocks = nn.Sequential(*blocks)
        self.channels_last_blocks = channels_last_blocks
        self.grad_checkpointing = False

    def forward(self, x: Tensor) -> Tensor:
        x = self.downsample(x)  # B, C, H, W
        if self.channels_last_blocks:
            # B, H, W, C; contiguous so that every norm and linear of the blocks reads dense
            # rows (a no-op for channels_last input: the previous stage's output is one)
            x = x.permute(0, 2, 3, 1).contiguous()
        if self.grad_checkpointing and torch.is_grad_enabled() and not torch.jit.is_scripting():
            for block in self.blocks:
                x = checkpoint(block, x, use_reentrant=False)
        else:
            x = self.blocks(x)
        if self.channels_last_blocks:
            x = x.permute(0, 3, 1, 2)  # B, C, H, W (a channels_last view)
        return x
