"""Input checks shared by the attention layers."""

from __future__ import annotations

from torch import Tensor


def check_heads(dim: int, num_heads: int, name: str = "dim") -> None:
    """Raise ValueError unless ``num_heads`` divides ``dim``."""
    if num_heads < 1:
        raise ValueError(f"num_heads must be >= 1, got {num_heads}")
    if dim % num_heads:
        raise ValueError(
            f"{name}={dim} is not divisible by num_heads={num_heads}; choose num_heads among the "
            f"divisors of {name} (e.g. {[d for d in range(1, min(dim, 64) + 1) if dim % d == 0]})"
        )


def check_feature_map(x: Tensor, dim: int, layout: str, module: str) -> None:
    """Validate a 4-D feature map in ``layout`` ("NHWC" or "NCHW") with ``dim`` channels."""
    if not isinstance(x, Tensor):
        raise TypeError(f"{module} expects a torch.Tensor, got {type(x).__name__}")
    if x.dim() != 4:
        raise ValueError(
            f"{module} expects a 4-D {layout} tensor, got shape {tuple(x.shape)}"
            + ("; add a batch dimension with x.unsqueeze(0)" if x.dim() == 3 else "")
        )
    if not x.is_floating_point():
        raise TypeError(
            f"{module} expects a floating-point input, got {x.dtype}; convert it with x.float()"
        )
    channels = x.shape[-1] if layout == "NHWC" else x.shape[1]
    if channels != dim:
        other = x.shape[1] if layout == "NHWC" else x.shape[-1]
        hint = ""
        if other == dim:
            wrong = "NCHW" if layout == "NHWC" else "NHWC"
            hint = f"; the input looks {wrong}: permute it to {layout}"
        raise ValueError(
            f"{module} was built for dim={dim} channels but the {layout} input "
            f"{tuple(x.shape)} has {channels}{hint}"
        )
