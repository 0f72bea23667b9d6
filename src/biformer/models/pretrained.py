"""Fetching the official weights under one cache file name per model.

The official download addresses all end in ``/root/content``; timm names its cache file after
the last path component, so every BiFormer variant would share (and overwrite, or worse, reuse)
one ``content`` file. When the weights would come from the registry URL, the entrypoints fetch
them here as ``<model>.<tag>.pth`` and hand timm the state_dict, which then goes through the same
filter and classifier adaptation as any other source.
"""

from __future__ import annotations

from typing import Any

import torch
from timm.models import resolve_pretrained_cfg

__all__ = ["pretrained_kwargs"]

_OTHER_SOURCES = ("source", "state_dict", "file", "hf_hub_id")


def pretrained_kwargs(variant: str, pretrained: bool, kwargs: dict[str, Any]) -> dict[str, Any]:
    """``kwargs`` for ``build_model_with_cfg``, with the URL weights pre-fetched if needed."""
    if not pretrained:
        return kwargs
    cfg = resolve_pretrained_cfg(
        variant,
        pretrained_cfg=kwargs.get("pretrained_cfg"),
        pretrained_cfg_overlay=kwargs.get("pretrained_cfg_overlay"),
    ).to_dict()
    url = cfg.get("url")
    if not url or any(cfg.get(k) for k in _OTHER_SOURCES):
        return kwargs  # timm loads a file, a state_dict or a hub id itself
    tag = cfg.get("tag") or "default"
    state_dict = torch.hub.load_state_dict_from_url(
        url,
        model_dir=kwargs.get("cache_dir"),
        map_location="cpu",
        progress=True,
        file_name=f"{variant}.{tag}.pth",
        weights_only=True,
    )
    overlay = dict(kwargs.get("pretrained_cfg_overlay") or {}, state_dict=state_dict)
    return dict(kwargs, pretrained_cfg_overlay=overlay)
