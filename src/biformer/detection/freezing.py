"""Frozen stages and the choice of BatchNorm for dense-prediction backbones.

A BiFormer body has five parts, in input order: ``stem``, ``stages.0`` ... ``stages.3``
(each stage includes its downsampling). ``trainable_layers = k`` trains the last ``k`` parts and
freezes the others, as torchvision's ``trainable_layers`` does for ResNets.
"""

from __future__ import annotations

from torch import nn
from torchvision.ops.misc import FrozenBatchNorm2d

__all__ = ["NORM_LAYERS", "body_parts", "convert_batchnorm", "freeze_parts"]

NORM_LAYERS = ("bn", "frozen_bn", "sync_bn")


def body_parts(body: nn.Module) -> list[nn.Module]:
    """``[stem, stages[0], ..., stages[-1]]`` of a BiFormer body, in input order."""
    stem = getattr(body, "stem", None)
    stages = getattr(body, "stages", None)
    if stem is None or stages is None:
        raise TypeError(
            f"expected a BiFormer model with 'stem' and 'stages' (timm.create_model('biformer_*'))"
            f", got {type(body).__name__}"
        )
    return [stem, *stages]


def freeze_parts(body: nn.Module, trainable_layers: int) -> list[nn.Module]:
    """Stop gradients to all parts but the last ``trainable_layers``; return the frozen parts.

    The frozen parts' parameters get ``requires_grad=False``; keeping their BatchNorm layers in
    eval mode (running statistics, no updates) is the caller's job, in its ``train()``.
    """
    parts = body_parts(body)
    if isinstance(trainable_layers, bool) or not isinstance(trainable_layers, int):
        raise TypeError(f"trainable_layers must be an int, got {trainable_layers!r}")
    if not 0 <= trainable_layers <= len(parts):
        raise ValueError(
            f"trainable_layers must be between 0 (all frozen) and {len(parts)} (stem and all "
            f"{len(parts) - 1} stages trainable), got {trainable_layers}"
        )
    frozen = parts[: len(parts) - trainable_layers]
    for part in frozen:
        for param in part.parameters():
            param.requires_grad_(False)
    return frozen


def _frozen_copy(bn: nn.BatchNorm2d) -> FrozenBatchNorm2d:
    tensors = list(bn.state_dict().values())
    device = tensors[0].device if tensors else None
    frozen = FrozenBatchNorm2d(bn.num_features, eps=bn.eps).to(device)
    if bn.affine:
        frozen.weight.copy_(bn.weight.detach())
        frozen.bias.copy_(bn.bias.detach())
    if bn.track_running_stats and bn.running_mean is not None:
        frozen.running_mean.copy_(bn.running_mean)
        frozen.running_var.copy_(bn.running_var)
    return frozen


def convert_batchnorm(module: nn.Module, norm_layer: str) -> nn.Module:
    """Return ``module`` with its BatchNorm layers as ``norm_layer`` asks.

    ``"bn"``: unchanged. ``"frozen_bn"``: every ``BatchNorm2d`` becomes torchvision's
    ``FrozenBatchNorm2d`` (fixed statistics and affine, the usual choice for small detection
    batches). ``"sync_bn"``: ``nn.SyncBatchNorm.convert_sync_batchnorm`` (statistics shared
    across the processes of a DDP job; without a process group it acts as BatchNorm).
    """
    if norm_layer not in NORM_LAYERS:
        raise ValueError(f"norm_layer must be one of {NORM_LAYERS}, got {norm_layer!r}")
    if norm_layer == "bn":
        return module
    if norm_layer == "sync_bn":
        return nn.SyncBatchNorm.convert_sync_batchnorm(module)
    if isinstance(module, nn.BatchNorm2d):
        return _frozen_copy(module)
    for name, child in module.named_children():
        new = convert_batchnorm(child, norm_layer)
        if new is not child:
            setattr(module, name, new)
    return module
