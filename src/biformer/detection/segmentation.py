"""The paper's per-stage LayerNorm for segmentation_models_pytorch models with a BiFormer encoder.

``smp.UPerNet(encoder_name="tu-biformer_small", ...)`` works as is (smp builds the encoder with
``timm.create_model(..., features_only=True)``). ``add_stage_norms(model)`` adds the extra
LayerNorm the paper's segmentation backbones put on each encoder output, without changing
anything else in the smp model.
"""

from __future__ import annotations

from collections.abc import Sequence

from timm.layers import LayerNorm2d
from torch import Tensor, nn

__all__ = ["StageNormFeatures", "add_stage_norms"]


class StageNormFeatures(nn.Module):
    """A timm ``features_only`` network whose every output map goes through a LayerNorm.

    Shape: ``[B, 3, H, W]`` -> list of NCHW maps ``[B, C_i, H / s_i, W / s_i]``.
    """

    def __init__(self, features: nn.Module, channels: Sequence[int]):
        super().__init__()
        self.features = features
        self.feature_info = getattr(features, "feature_info", None)
        self.norms = nn.ModuleList([LayerNorm2d(int(c), eps=1e-6) for c in channels])

    def forward(self, x: Tensor) -> list[Tensor]:
        maps = self.features(x)
        if len(maps) != len(self.norms):
            raise RuntimeError(
                f"the encoder returned {len(maps)} maps but {len(self.norms)} norms were built"
            )
        return [norm(m) for norm, m in zip(self.norms, maps, strict=True)]


def add_stage_norms(model: nn.Module) -> nn.Module:
    """Add a LayerNorm on each encoder output of an smp model with a ``tu-`` encoder (in place).

    Returns the same model, whose ``encoder.model`` is now a ``StageNormFeatures``.
    """
    encoder = getattr(model, "encoder", None)
    features = getattr(encoder, "model", None)
    info = getattr(features, "feature_info", None)
    if features is None or info is None or not hasattr(info, "channels"):
        raise TypeError(
            "add_stage_norms expects a segmentation_models_pytorch model built with a timm "
            f"encoder (encoder_name='tu-biformer_*'), got {type(model).__name__}"
        )
    if isinstance(features, StageNormFeatures):
        return model  # already added
    channels = info.channels()
    ref = next(features.parameters())
    encoder.model = StageNormFeatures(features, channels).to(ref.device)
    return model
