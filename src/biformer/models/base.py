"""The model class every BiFormer family shares: construction and the timm interface.

Every family is ``stem -> stages (4) -> norm -> global pool -> head``. Stage ``i`` is a
``BiFormerStage`` holding ``downsample`` (``Identity`` for stage 0, whose downsampling is the stem)
and ``blocks``; it takes and returns NCHW maps. A family subclass says what its stem, its
downsampling and its blocks are (``make_stem``, ``make_downsample``, ``block_cls``) and its
defaults; the constructor here builds the rest.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from timm.layers import SelectAdaptivePool2d, get_device_dtype, to_2tuple
from timm.models._features import feature_take_indices
from torch import Tensor, nn

from .blocks import GLOBAL, GLOBAL_LEPE
from .layout import checkpoint_filter_fn
from .stages import BiFormerStage, drop_path_rates, stage_strides, stage_tuple

try:  # timm >= 1.0.26 records the nominal input size of flexible models
    from timm.models._input import update_model_input_size
except ImportError:  # pragma: no cover - older timm
    def update_model_input_size(model: nn.Module, img_size: Any, **model_args: Any) -> None:
        del model, img_size, model_args

__all__ = ["GLOBAL_POOLS", "BiFormerBase"]

GLOBAL_POOLS = ("avg", "max", "avgmax", "catavgmax", "")
IntOrSeq = int | Sequence[int]


def feature_info(dims: Sequence[int], strides: Sequence[int]) -> list[dict[str, Any]]:
    """timm's ``feature_info``: each stage's channels, reduction (the stem's 4 times the
    strides so far) and module name."""
    info, reduction = [], 4
    for i, stride in enumerate(strides):
        reduction *= stride
        info.append(dict(num_chs=dims[i], reduction=reduction, module=f"stages.{i}"))
    return info


class BiFormerBase(nn.Module):
    """BiFormer backbone and classifier; the families subclass it (``BiFormer``, ``BiFormerSTL``).

    Args:
        depths: blocks per stage.
        dims: channels per stage.
        in_chans: input channels.
        num_classes: classifier outputs (0: no classifier, ``forward`` returns pooled features).
        global_pool: ``"avg"``, ``"max"``, ``"avgmax"``, ``"catavgmax"`` (twice the features)
            or ``""`` (keep the map; a classifier then runs at every position).
        img_size: nominal input size (recorded for timm's data config; any size runs).
        mlp_ratio: MLP hidden width / dim.
        head_dim: channels per head of the routed-attention stages.
        topks: attention per stage: routed regions (> 0), ``"global"`` or ``"global_lepe"``
            (the official codes -1 and -2 are accepted).
        n_win: regions per side, an int or one per stage (``n_win x n_win`` regions).
        auto_pad: pad maps that are not multiples of ``n_win`` (bottom/right), crop after;
            False raises on such sizes instead.
        side_dwconv: LePE kernel size.
        output_stride: 32, or 16 / 8 for dense prediction (later downsamplings keep the size).
        drop_rate: dropout before the classifier.
        drop_path_rate: stochastic depth, rising linearly to this value over all blocks.
        norm_layer: the blocks' norm (a timm name, class or partial; default the official one).
        act_layer: the MLP's (and the two-conv stem's) activation (default GELU).
        device, dtype: where and in which dtype the parameters are created.

    Shape: ``forward``: ``[B, in_chans, H, W]`` -> ``[B, num_classes]``.
    """

    block_cls: type[nn.Module]
    channels_last_blocks: bool = True

    def __init__(
        self,
        depths: IntOrSeq,
        dims: IntOrSeq,
        *,
        in_chans: int = 3,
        num_classes: int = 1000,
        global_pool: str = "avg",
        img_size: int | tuple[int, int] = 224,
        mlp_ratio: float = 3.0,
        head_dim: int = 32,
        topks: int | str | Sequence[int | str] = (1, 4, 16, GLOBAL_LEPE),
        n_win: IntOrSeq = 7,
        auto_pad: bool = True,
        side_dwconv: int = 5,
        output_stride: int = 32,
        drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        norm_layer: Any = None,
        act_layer: Any = None,
        device: Any = None,
        dtype: torch.dtype | None = None,
    ):
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        depths, dims = stage_tuple(depths, "depths"), stage_tuple(dims, "dims")
        topks = stage_tuple(topks, "topks", names=(GLOBAL, GLOBAL_LEPE))
        n_wins = stage_tuple(n_win, "n_win")
        strides = (1, *stage_strides(output_stride))
        dpr = drop_path_rates(depths, drop_path_rate)
        if num_classes < 0:
            raise ValueError(f"num_classes must be >= 0 (0: no classifier), got {num_classes}")
        common = dict(mlp_ratio=mlp_ratio, head_dim=head_dim, side_dwconv=side_dwconv,
                      auto_pad=auto_pad, norm_layer=norm_layer, act_layer=act_layer, **dd)

        self.stem = self.make_stem(in_chans, dims[0], act_layer=act_layer, **dd)
        stages = []
        for i in range(4):
            downsample = (nn.Identity() if i == 0 else
                          self.make_downsample(dims[i - 1], dims[i], strides[i], **dd))
            blocks = [self.block_cls(dims[i], topk=topks[i], n_win=n_wins[i],
                                     drop_path=dpr[i][j], **common) for j in range(depths[i])]
            stages.append(BiFormerStage(downsample, blocks,
                                        channels_last_blocks=self.channels_last_blocks))
        self.stages = nn.Sequential(*stages)

        self.in_chans, self.num_classes, self.output_stride = in_chans, num_classes, output_stride
        self.img_size = to_2tuple(img_size)
        self.embed_dim = list(dims)
        self.num_features = dims[-1]
        self.drop_rate = drop_rate
        self.feature_info = feature_info(dims, strides)
        self.norm = nn.BatchNorm2d(dims[-1], **dd)
        self._set_pool(global_pool)
        self.head_drop = nn.Dropout(drop_rate)
        self.head = self._make_head(num_classes, **dd)
        self.apply(self._init_weights)

    # ---- what a family defines ----------------------------------------------------------------

    def make_stem(self, in_chans: int, dim: int, *, act_layer: Any, device: Any,
                  dtype: Any) -> nn.Module:
        """``[B, in_chans, H, W]`` -> ``[B, dim, H/4, W/4]``."""
        raise NotImplementedError

    def make_downsample(self, in_dim: int, out_dim: int, stride: int, *, device: Any,
                        dtype: Any) -> nn.Module:
        """``[B, in_dim, H, W]`` -> ``[B, out_dim, H/stride, W/stride]``."""
        raise NotImplementedError

    # ---- construction helpers -----------------------------------------------------------------

    def _set_pool(self, global_pool: str) -> None:
        assert global_pool in GLOBAL_POOLS, (
            f"global_pool must be one of {GLOBAL_POOLS} ('' keeps the map), got {global_pool!r}")
        self.global_pool = global_pool
        # timm's "fast" pools reduce with mean/amax over (H, W): the official x.mean((2, 3))
        self.head_pool = SelectAdaptivePool2d(
            pool_type=f"fast{global_pool}" if global_pool else "", flatten=bool(global_pool))
        self.head_hidden_size = self.num_features * self.head_pool.feat_mult()

    def _make_head(self, num_classes: int, **dd: Any) -> nn.Module:
        if num_classes == 0:
            return nn.Identity()
        head = nn.Linear(self.head_hidden_size, num_classes, **dd)
        self._init_weights(head)
        return head

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

    def __prepare_scriptable__(self) -> nn.Module:
        """``torch.jit.script`` calls this first: say why it cannot compile these models."""
        raise RuntimeError(
            f"TorchScript cannot compile {type(self).__name__}: the Bi-Level Routing Attention "
            "operator (biformer.ops) takes keyword-only arguments and chooses its backend in "
            "Python at call time. Use torch.compile, torch.export or `biformer export` (ONNX)."
        )

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

    @torch.jit.ignore
    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """New classifier for ``num_classes`` (0: none); ``global_pool`` as in the constructor
        (None keeps the current one). New modules take the model's device, dtype and mode."""
        if num_classes < 0:
            raise ValueError(f"num_classes must be >= 0 (0: no classifier), got {num_classes}")
        dd = get_device_dtype(self)
        if global_pool is not None:
            self._set_pool(global_pool)
        self.num_classes = num_classes
        self.head = self._make_head(num_classes, **dd)
        self.head.train(self.training)
        self.head_pool.train(self.training)

    @torch.jit.ignore
    def set_input_size(self, img_size: int | tuple[int, int] | None = None) -> None:
        """Record a new nominal input size. Nothing is rebuilt: the routed stages split any map
        into ``n_win x n_win`` regions (padding when needed), so weights stay valid."""
        if img_size is not None:
            self.img_size = to_2tuple(img_size)
        update_model_input_size(self, self.img_size)

    def forward_features(self, x: Tensor) -> Tensor:
        """``[B, in_chans, H, W]`` -> normalised ``[B, C3, H/32, W/32]`` (NCHW)."""
        x = self.stem(x)
        x = self.stages(x)
        return self.norm(x)

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        """Pool, dropout, classifier: ``[B, C3, h, w]`` -> ``[B, num_classes]``.

        With ``global_pool=''`` the map is kept and the classifier runs at every position
        (``[B, num_classes, h, w]``). ``pre_logits=True`` returns the features before it.
        """
        x = self.head_drop(self.head_pool(x))  # B, C (or B, C, h, w without pooling)
        if pre_logits:
            return x
        if not self.global_pool:
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
        """Stage outputs and, unless ``intermediates_only``, the final (NCHW) features.

        ``indices``: the last n stages if an int, all if None, else the stage indices.
        ``norm``: apply the final norm to the last stage's output when it is taken.
        ``output_fmt``: ``"NCHW"`` or ``"NHWC"`` for the stage outputs.
        """
        assert output_fmt in ("NCHW", "NHWC"), f"output_fmt must be NCHW or NHWC, got {output_fmt}"
        intermediates = []
        take_indices, max_index = feature_take_indices(len(self.stages), indices)
        last_idx = len(self.stages) - 1
        stages = self.stages if not stop_early else self.stages[: max_index + 1]
        x = self.stem(x)
        feat_idx = -1
        for feat_idx, stage in enumerate(stages):
            x = stage(x)
            if feat_idx in take_indices:
                out = self.norm(x) if norm and feat_idx == last_idx else x
                intermediates.append(out if output_fmt == "NCHW" else out.permute(0, 2, 3, 1))
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
            self.num_features = self.feature_info[max_index]["num_chs"]
        if prune_head or prune_end:
            self.reset_classifier(0, "")
        return take_indices
