"""What the three BiFormer families share: the stage container, the timm interface, the options.

Every family is ``stem -> stages (4) -> norm -> global pool -> head``. Stage ``i`` is a
``BiFormerStage`` holding ``downsample`` (``Identity`` for stage 0, whose downsampling is the stem)
and ``blocks``; it takes and returns NCHW maps. Stages whose blocks work on NHWC tensors permute
once on entry and once on exit, so the blocks never permute.

The official checkpoints store ``downsample_layers.{i}`` and ``stages.{i}.{j}`` (T/S/B) or
``stages.{i}.blocks.{j}`` (STL); ``checkpoint_filter_fn`` renames them to this layout.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from timm.layers import DropPath
from timm.models._features import feature_take_indices
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from ..layers import Attention, AttentionLePE, BiLevelRoutingAttention

__all__ = [
    "BiFormerBase",
    "BiFormerStage",
    "checkpoint_filter_fn",
    "drop_path_rates",
    "nhwc_attention",
    "stage_strides",
    "stage_tuple",
]

NUM_STAGES = 4
GLOBAL_POOLS = ("avg", "")


def stage_tuple(value: int | Sequence[int], name: str) -> tuple[int, ...]:
    """An int (same for every stage) or one value per stage -> a 4-tuple of ints."""
    if isinstance(value, bool):
        raise TypeError(f"{name} must be an int or a sequence of {NUM_STAGES} ints, got {value!r}")
    if isinstance(value, int):
        return (value,) * NUM_STAGES
    if isinstance(value, Sequence) and not isinstance(value, str):
        values = tuple(value)
        if len(values) == NUM_STAGES and all(
            isinstance(v, int) and not isinstance(v, bool) for v in values
        ):
            return values
    raise ValueError(
        f"{name} must be an int or a sequence of {NUM_STAGES} ints (one per stage), got {value!r}"
    )


def stage_strides(output_stride: int) -> tuple[int, ...]:
    """Strides of the downsampling of stages 1..3 for ``output_stride`` 32, 16 or 8."""
    if output_stride == 32:
        return (2, 2, 2)
    if output_stride == 16:
        return (2, 2, 1)
    if output_stride == 8:
        return (2, 1, 1)
    raise ValueError(
        f"output_stride must be 32 (classification), 16 or 8 (dense prediction: the last one or "
        f"two downsamplings keep the resolution), got {output_stride!r}"
    )


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


def make_drop_path(rate: float) -> nn.Module:
    return DropPath(rate) if rate > 0.0 else nn.Identity()


def nhwc_attention(
    dim: int,
    *,
    topk: int,
    n_win: int,
    head_dim: int,
    side_dwconv: int,
    auto_pad: bool,
) -> nn.Module:
    """The token mixer of one NHWC block, as the official models choose it from ``topk``.

    ``topk > 0``: Bi-Level Routing Attention (``dim // head_dim`` heads, ``n_win x n_win``
    regions); ``topk == -1``: global attention (8 heads); ``topk == -2``: global attention with
    LePE (8 heads), the official last stage. Input and output ``[B, H, W, dim]``.
    """
    if topk > 0:
        return BiLevelRoutingAttention(
            dim,
            num_heads=dim // head_dim,
            n_win=n_win,
            qk_dim=dim,
            qk_scale=None,
            kv_per_win=-1,
            kv_downsample_ratio=4,
            kv_downsample_mode="identity",
            topk=topk,
            param_attention="qkvo",
            side_dwconv=side_dwconv,
            auto_pad=auto_pad,
        )
    if topk == -1:
        return Attention(dim)
    if topk == -2:
        return AttentionLePE(dim, side_dwconv=side_dwconv)
    raise ValueError(
        f"topk={topk} is not supported: use a positive number of routed regions, -1 (global "
        "attention) or -2 (global attention with LePE, the official last stage)"
    )


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


class BiFormerBase(nn.Module):
    """timm interface of the BiFormer families (``stem``, ``stages``, ``norm``, ``head``).

    Subclasses assign ``self.stem`` and ``self.stages`` (an ``nn.Sequential`` of four
    ``BiFormerStage``), then call ``_init_head``. ``forward_features`` returns the normalised
    NCHW map ``[B, C3, H/32, W/32]`` (``H/output_stride``); ``forward`` returns ``[B, classes]``.
    """

    stem: nn.Module
    stages: nn.Sequential

    def _init_head(
        self,
        dims: Sequence[int],
        *,
        num_classes: int,
        global_pool: str,
        drop_rate: float,
        in_chans: int,
        output_stride: int,
    ) -> None:
        if num_classes < 0:
            raise ValueError(f"num_classes must be >= 0 (0: no classifier), got {num_classes}")
        if global_pool not in GLOBAL_POOLS:
            raise ValueError(f"global_pool must be 'avg' or '' (no pooling), got {global_pool!r}")
        self.num_classes = num_classes
        self.global_pool = global_pool
        self.in_chans = in_chans
        self.output_stride = output_stride
        self.embed_dim = list(dims)
        self.num_features = self.head_hidden_size = dims[-1]
        self.drop_rate = drop_rate
        self.feature_info = []
        reduction = 4
        for i, stride in enumerate((1, *stage_strides(output_stride))):
            reduction *= stride
            self.feature_info.append(dict(num_chs=dims[i], reduction=reduction,
                                          module=f"stages.{i}"))
        self.norm = nn.BatchNorm2d(dims[-1])
        self.head_drop = nn.Dropout(drop_rate)
        self.head = nn.Linear(dims[-1], num_classes) if num_classes > 0 else nn.Identity()

    @staticmethod
    @torch.no_grad()
    def _init_weights(module: nn.Module) -> None:
        """Official init: truncated normal (std 0.02) linear weights, zero biases, unit norms.

        The official ``trunc_normal_(std=0.02)`` truncates at +-2, i.e. 100 standard
        deviations: a normal draw clamped to the bounds has the same distribution and is two
        to three times faster to sample (it matters for the 57 M parameters of BiFormer-B).
        """
        if isinstance(module, nn.Linear):
            module.weight.normal_(0.0, 0.02).clamp_(-2.0, 2.0)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.LayerNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)

    # ---- checkpoints ------------------------------------------------------------------------

    def checkpoint_filter(self, state_dict: Mapping[str, Any]) -> dict[str, Tensor]:
        """Convert an official (or wrapped) state_dict to this model's layout."""
        return checkpoint_filter_fn(state_dict, self)

    # ---- timm interface -----------------------------------------------------------------------

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        """Nothing beyond timm's usual exclusion of 1-D parameters (norms, biases)."""
        return set()

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict[str, Any]:
        return dict(
            stem=r"^stem",
            blocks=r"^stages\.(\d+)" if coarse else [
                (r"^stages\.(\d+)\.downsample", (0,)),
                (r"^stages\.(\d+)\.blocks\.(\d+)", None),
                (r"^norm", (99999,)),
            ],
        )

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute block activations in backward (``torch.utils.checkpoint``) to save memory."""
        for stage in self.stages:
            stage.grad_checkpointing = enable

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """New classifier for ``num_classes`` (0: none); ``global_pool`` 'avg' or '' (none)."""
        if num_classes < 0:
            raise ValueError(f"num_classes must be >= 0 (0: no classifier), got {num_classes}")
        if global_pool is not None:
            if global_pool not in GLOBAL_POOLS:
                raise ValueError(
                    f"global_pool must be 'avg' or '' (no pooling), got {global_pool!r}"
                )
            self.global_pool = global_pool
        self.num_classes = num_classes
        ref = self.norm.weight if isinstance(self.norm, nn.BatchNorm2d) else None
        factory = dict(device=ref.device, dtype=ref.dtype) if ref is not None else {}
        self.head = (
            nn.Linear(self.num_features, num_classes, **factory) if num_classes > 0
            else nn.Identity()
        )
        if num_classes > 0:
            self._init_weights(self.head)

    def forward_features(self, x: Tensor) -> Tensor:
        """``[B, in_chans, H, W]`` -> normalised ``[B, C3, H/32, W/32]`` (NCHW)."""
        x = self.stem(x)
        x = self.stages(x)
        return self.norm(x)

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        """Pool (``global_pool='avg'``), dropout, classifier: ``[B, C3, h, w]`` -> ``[B, K]``.

        With ``global_pool=''`` the map is kept and the classifier runs at every position
        (``[B, K, h, w]``). ``pre_logits=True`` returns the features before the classifier.
        """
        if self.global_pool == "avg":
            x = x.mean((2, 3))  # B, C
        x = self.head_drop(x)
        if pre_logits:
            return x
        if x.ndim == 4:
            return self.head(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        return self.head(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x))

    def forward_intermediates(
        self,
        x: Tensor,
        indices: int | list[int] | tuple[int, ...] | None = None,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
    ) -> list[Tensor] | tuple[Tensor, list[Tensor]]:
        """Stage outputs (NCHW) and, unless ``intermediates_only``, the final features.

        ``indices``: the last n stages if an int, all if None, else the stage indices.
        ``norm``: apply the final norm to the last stage's output when it is taken.
        """
        if output_fmt != "NCHW":
            raise ValueError(f"output_fmt must be 'NCHW', got {output_fmt!r}")
        intermediates = []
        take_indices, max_index = feature_take_indices(len(self.stages), indices)
        last_idx = len(self.stages) - 1
        stages = self.stages if not stop_early else self.stages[: max_index + 1]
        x = self.stem(x)
        feat_idx = -1
        for feat_idx, stage in enumerate(stages):
            x = stage(x)
            if feat_idx in take_indices:
                intermediates.append(self.norm(x) if norm and feat_idx == last_idx else x)
        if intermediates_only:
            return intermediates
        if feat_idx == last_idx:
            x = self.norm(x)
        return x, intermediates

    def prune_intermediate_layers(
        self,
        indices: int | list[int] | tuple[int, ...] = 1,
        prune_norm: bool = False,
        prune_head: bool = True,
    ) -> list[int]:
        """Drop the stages (and norm/head) that the requested intermediates do not need."""
        take_indices, max_index = feature_take_indices(len(self.stages), indices)
        prune_end = max_index < len(self.stages) - 1
        if prune_norm or prune_end:
            self.norm = nn.Identity()
        self.stages = self.stages[: max_index + 1]
        if prune_end:
            self.num_features = self.head_hidden_size = self.feature_info[max_index]["num_chs"]
        if prune_head or prune_end:
            self.reset_classifier(0, "")
        return take_indices


# ---- official checkpoint layout --------------------------------------------------------------

_WRAPPER_PREFIXES = ("module.", "_orig_mod.")
_OFFICIAL_RENAMES: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"^downsample_layers\.0\."), "stem."),
    (re.compile(r"^downsample_layers\.([1-3])\."), r"stages.\1.downsample."),
    (re.compile(r"^stages\.(\d+)\.(\d+)\."), r"stages.\1.blocks.\2."),  # T/S/B blocks
)


def unwrap_state_dict(state_dict: Mapping[str, Any]) -> Mapping[str, Any]:
    """The weights inside a training checkpoint (``state_dict`` or ``model`` entry)."""
    for key in ("state_dict", "model"):
        inner = state_dict.get(key)
        if isinstance(inner, Mapping):
            return inner
    return state_dict


def strip_wrapper_prefixes(key: str) -> str:
    """Remove DDP (``module.``), torch.compile (``_orig_mod.``) and activation-checkpoint
    wrapper (``_checkpoint_wrapped_module.``) names from a parameter name."""
    changed = True
    while changed:
        changed = False
        for prefix in _WRAPPER_PREFIXES:
            if key.startswith(prefix):
                key, changed = key[len(prefix):], True
    return key.replace("_checkpoint_wrapped_module.", "")


def checkpoint_filter_fn(
    state_dict: Mapping[str, Any], model: nn.Module | None = None
) -> dict[str, Tensor]:
    """Rename an official BiFormer state_dict to this package's module layout.

    ``downsample_layers.0`` -> ``stem``, ``downsample_layers.{i}`` -> ``stages.{i}.downsample``,
    ``stages.{i}.{j}`` -> ``stages.{i}.blocks.{j}``. Unwraps ``{"model": ...}`` /
    ``{"state_dict": ...}`` and wrapper prefixes; keys in neither layout are passed through
    unchanged (strict loading then reports them), so nothing is dropped silently.
    """
    del model  # the renaming does not depend on the variant
    state_dict = unwrap_state_dict(state_dict)
    out = {strip_wrapper_prefixes(k): v for k, v in state_dict.items()}
    if any(k.startswith("stem.") for k in out):
        return out  # already in this package's layout
    renamed = {}
    for key, value in out.items():
        for pattern, repl in _OFFICIAL_RENAMES:
            new_key, n = pattern.subn(repl, key)
            if n:
                key = new_key
                break
        renamed[key] = value
    return renamed


def known_layouts() -> dict[tuple[str, tuple[int, ...], tuple[int, ...]], str]:
    """``(family, depths, dims) -> model name`` of the registered variants (for error hints)."""
    return dict(_KNOWN_LAYOUTS)


_KNOWN_LAYOUTS: dict[tuple[str, tuple[int, ...], tuple[int, ...]], str] = {}


def register_layout(name: str, family: str, depths: Sequence[int], dims: Sequence[int]) -> None:
    _KNOWN_LAYOUTS[(family, tuple(depths), tuple(dims))] = name


def describe_layout(shapes: Mapping[str, tuple[int, ...]]) -> tuple[str, tuple[int, ...],
                                                                    tuple[int, ...]] | None:
    """``(family, depths, dims)`` read from the key names and shapes of a state_dict in this
    package's layout, or None if it is not a BiFormer state_dict."""
    depths, dims = [], []
    for i in range(NUM_STAGES):
        pattern = re.compile(rf"^stages\.{i}\.blocks\.(\d+)\.")
        blocks = {int(m.group(1)) for k in shapes if (m := pattern.match(k))}
        depths.append(max(blocks) + 1 if blocks else 0)
        norm1 = shapes.get(f"stages.{i}.blocks.0.norm1.weight")
        dims.append(int(norm1[0]) if norm1 else 0)
    if not any(depths):
        return None
    if "stages.0.blocks.0.pos_embed.weight" in shapes:
        family = "biformer"
    elif "stages.0.blocks.0.attn.qkv_linear.weight" in shapes:
        family = "biformer_stl_nchw"
    else:
        family = "biformer_stl"
    return family, tuple(depths), tuple(dims)

