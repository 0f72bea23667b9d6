"""Functional, parameter-free Bi-Level Routing Attention.

Layout conventions (all public ops):

* feature maps are NHWC: ``[batch, height, width, channels]``;
* ``regions = (Rh, Rw)`` (or ``n_win``) splits them into ``Rh x Rw`` regions numbered in raster
  order; ``height`` and ``width`` must be multiples of ``Rh`` and ``Rw``;
* channels of multi-head tensors are ``(head, head_dim)``; routing is shared by all heads;
* ``scale`` is the softmax temperature multiplying the queries. The official modules use
  ``qk_dim ** -0.5`` (the whole query/key width, not the per-head width): pass it explicitly.
"""

from __future__ import annotations

import dataclasses

from torch import Tensor

from .checks import check_routed_attention_args
from .dispatch import choose_backend, get_backend
from .regions import as_pair, region_mean
from .routing import topk_routing

__all__ = ["routed_attention", "routed_attention_with_weights", "bi_level_routing_attention"]


def routed_attention(
    query: Tensor,
    key: Tensor,
    value: Tensor,
    index: Tensor,
    *,
    regions: int | tuple[int, int],
    num_heads: int,
    scale: float,
    weight: Tensor | None = None,
    key_valid: tuple[int, int] | None = None,
    backend: str = "auto",
) -> Tensor:
    """Each query region attends to all tokens of its routed key regions (multi-head).

    Args:
        query: ``[B, Hq, Wq, Cqk]`` NHWC queries.
        key: ``[B, Hk, Wk, Cqk]`` NHWC keys (``Hk, Wk`` may differ from the queries' when keys
            are downsampled per region; the region grid is the same).
        value: ``[B, Hk, Wk, Cv]`` NHWC values.
        index: ``[B, Rh*Rw, topk]`` int64 routed key-region ids per query region (from
            ``topk_routing``); shared by all heads; values must lie in ``[0, Rh*Rw)``.
        regions: ``n_win`` or ``(Rh, Rw)``, the number of regions along height and width.
        num_heads: attention heads; must divide ``Cqk`` and ``Cv``.
        scale: softmax temperature applied to the queries.
        weight: optional ``[B, Rh*Rw, topk]`` soft-routing weights; gathered keys and values of
            routed region ``j`` are multiplied by ``weight[..., j]`` (differentiable).
        key_valid: optional ``(H, W)``: key tokens outside the top-left ``H x W`` are padding and
            get no attention (off in the official modules, which attend to padded zeros).
        backend: ``"auto"``, ``"reference"``, ``"chunked"``, ``"flex"`` or ``"triton"``.

    Returns:
        ``[B, Hq, Wq, Cv]`` NHWC output, contiguous.
    """
    rh_rw = as_pair(regions, "regions")
    problem = check_routed_attention_args(query, key, value, index, weight, rh_rw, num_heads)
    if key_valid is not None:
        problem = dataclasses.replace(problem, masked_keys=True)
    if query.shape[0] == 0:
        return value.new_empty(0, query.shape[1], query.shape[2], value.shape[-1])
    name = choose_backend(problem, backend)
    impl = get_backend(name)
    return impl.routed_attention(
        query,
        key,
        value,
        index,
        weight,
        regions=rh_rw,
        num_heads=num_heads,
        scale=scale,
        key_valid=key_valid,
    )


def routed_attention_with_weights(
    query: Tensor,
    key: Tensor,
    value: Tensor,
    index: Tensor,
    *,
    regions: int | tuple[int, int],
    num_heads: int,
    scale: float,
    weight: Tensor | None = None,
    key_valid: tuple[int, int] | None = None,
) -> tuple[Tensor, Tensor]:
    """``routed_attention`` on the reference backend, also returning the attention matrix.

    Returns:
        ``(out, attn)``: ``out`` ``[B, Hq, Wq, Cv]``; ``attn`` ``[B*R, heads, Lq, topk*Lk]``
        (softmax probabilities; query tokens and each routed region's key tokens in raster
        order, routed regions in ``index`` order).
    """
    from .backends import reference

    rh_rw = as_pair(regions, "regions")
    check_routed_attention_args(query, key, value, index, weight, rh_rw, num_heads)
    return reference.routed_attention_with_weights(
        query, key, value, index, weight, regions=rh_rw, num_heads=num_heads, scale=scale,
        key_valid=key_valid,
    )


def bi_level_routing_attention(
    query: Tensor,
    key: Tensor,
    value: Tensor,
    *,
    n_win: int | tuple[int, int],
    topk: int,
    num_heads: int,
    scale: float,
    soft_routing: bool = False,
    diff_routing: bool = False,
    backend: str = "auto",
) -> tuple[Tensor, Tensor, Tensor]:
    """The whole parameter-free BRA: region means -> top-k routing -> routed attention.

    Args:
        query, key: ``[B, H, W, Cqk]`` NHWC; value ``[B, H, W, Cv]``.
        n_win: regions per side (or ``(Rh, Rw)``); H and W must be multiples of it.
        topk: key regions kept per query region.
        num_heads, scale: as in ``routed_attention``; routing logits use the same ``scale``.
        soft_routing: scale gathered keys/values by the routing softmax weights.
        diff_routing: let gradients flow through the region means into the routing
            (otherwise routing is computed on detached tensors, as in the official default).

    Returns:
        ``(out [B, H, W, Cv], weights [B, R, topk], index [B, R, topk])``.
    """
    regions = as_pair(n_win, "n_win")
    q_regions = region_mean(query, regions)
    k_regions = region_mean(key, regions)
    if not diff_routing:
        q_regions, k_regions = q_regions.detach(), k_regions.detach()
    weights, index = topk_routing(q_regions, k_regions, topk=topk, scale=scale)
    out = routed_attention(
        query, key, value, index, regions=regions, num_heads=num_heads, scale=scale,
        weight=weights if soft_routing else None, backend=backend,
    )
    return out, weights, index


