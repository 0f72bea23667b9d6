"""Per-region key/value downsampling of the legacy BRA (``kv_downsample_mode``)."""

from __future__ import annotations

from torch import Tensor, nn

from ..ops.arguments import check_int

__all__ = ["KV_DOWNSAMPLE_MODES", "make_kv_downsample", "downsample_regions"]

KV_DOWNSAMPLE_MODES = ("identity", "avgpool", "maxpool", "ada_avgpool", "ada_maxpool")
_UNSUPPORTED = {
    "fracpool": "fractional pooling was never implemented by the reference",
    "conv": "convolutional downsampling was never implemented by the reference",
}


def make_kv_downsample(
    mode: str, kv_per_win: int | None, kv_downsample_ratio: int | None
) -> nn.Module:
    """The pooling module applied to each region's keys/values (``[B*R, C, h, w]``)."""
    if mode in _UNSUPPORTED:
        raise ValueError(
            f"kv_downsample_mode={mode!r} is not supported: {_UNSUPPORTED[mode]}; "
            f"choose one of {KV_DOWNSAMPLE_MODES}"
        )
    if mode not in KV_DOWNSAMPLE_MODES:
        raise ValueError(
            f"kv_downsample_mode={mode!r} is unknown; choose one of {KV_DOWNSAMPLE_MODES}"
        )
    if mode.startswith("ada_"):
        if kv_per_win is not None:
            check_int(kv_per_win, "kv_per_win", minimum=0)
        if kv_per_win is None or kv_per_win < 1:
            raise ValueError(f"kv_downsample_mode={mode!r} needs kv_per_win >= 1, got {kv_per_win}")
        return nn.AdaptiveAvgPool2d(kv_per_win) if mode == "ada_avgpool" else nn.AdaptiveMaxPool2d(
            kv_per_win
        )
    if mode in ("avgpool", "maxpool"):
        if kv_downsample_ratio is not None:
            check_int(kv_downsample_ratio, "kv_downsample_ratio", minimum=0)
        if kv_downsample_ratio is None or kv_downsample_ratio < 1:
            raise ValueError(
                f"kv_downsample_mode={mode!r} needs kv_downsample_ratio >= 1, "
                f"got {kv_downsample_ratio}"
            )
        if kv_downsample_ratio == 1:
            return nn.Identity()
        pool = nn.AvgPool2d if mode == "avgpool" else nn.MaxPool2d
        return pool(kv_downsample_ratio)
    return nn.Identity()


def downsample_regions(x: Tensor, n_win: tuple[int, int], pool: nn.Module) -> Tensor:
    """Pool every region of an NHWC map separately.

    ``x`` ``[B, H, W, C]`` -> ``[B, Rh*h', Rw*w', C]`` where ``(h', w')`` is the pooled region size.
    """
    b, h, w, c = x.shape
    rh, rw = n_win
    sh, sw = h // rh, w // rw
    kernel = getattr(pool, "kernel_size", None)
    if isinstance(kernel, int) and kernel > min(sh, sw):
        raise ValueError(
            f"kv_downsample_ratio={kernel} is larger than the {sh}x{sw}-token regions of this "
            f"{h}x{w} map; lower kv_downsample_ratio or n_win"
        )
    t = x.reshape(b, rh, sh, rw, sw, c).permute(0, 1, 3, 5, 2, 4).reshape(b * rh * rw, c, sh, sw)
    t = pool(t)
    ph, pw = t.shape[-2:]
    if ph == 0 or pw == 0:
        raise ValueError(
            f"kv downsampling turns {sh}x{sw} regions into empty ones; lower "
            "kv_downsample_ratio or use larger regions"
        )
    t = t.reshape(b, rh, rw, c, ph, pw).permute(0, 1, 4, 2, 5, 3)
    return t.reshape(b, rh * ph, rw * pw, c)
