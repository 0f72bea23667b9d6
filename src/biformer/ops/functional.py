"""Functional, parameter-free Bi-Level Routing Attention.

Layout conventions (all public ops):

* feature maps are NHWC: ``[batch, height, width, channels]``;
* ``n_win = (Rh, Rw)`` (or an int for both) is the number of regions per side: the map is split
  into ``num_regions = Rh * Rw`` regions numbered in raster order, each of ``region_size =
  (H // Rh, W // Rw)`` tokens; ``height`` and ``width`` must be multiples of ``Rh`` and ``Rw``;
* channels of multi-head tensors are ``(head, head_dim)``; routing is shared by all heads;
* ``scale`` is the softmax temperature multiplying the queries. The official modules use
  ``qk_dim ** -0.5`` (the whole query/key width, not the per-head width): pass it explicitly.
"""

from __future__ import annotations

import warnings

from torch import Tensor

from .arguments import check_n_win, check_scale, check_topk
from .checks import check_maps, check_routed_attention_args, describe_problem
from .dispatch import choose_backend, exporting, get_backend
from .regions import region_mean
from .routing import topk_routing

__all__ = ["routed_attention", "routed_attention_with_weights", "bi_level_routing_attention"]


def _n_win(n_win, regions) -> tuple[int, int]:
    """``n_win`` as a pair; ``regions=`` is its former name (deprecated)."""
    if regions is not None:
        if n_win is not None:
            raise TypeError("pass n_win= only (regions= is its deprecated former name)")
        warnings.warn("regions= is deprecated: it is called n_win= (regions per side)",
                      DeprecationWarning, stacklevel=3)
        n_win = regions
    if n_win is None:
        raise TypeError("n_win= (regions per side, an int or (Rh, Rw)) is required")
    return check_n_win(n_win)


def _problem(query, key, value, index, weight, n_win, num_heads, scale, key_valid, validate):
    """The call's ``Problem``, after the checks when ``validate``."""
    if validate:
        return check_routed_attention_args(
            query, key, value, index, weight, n_win, num_heads, scale=scale,
            key_valid=key_valid, check_values=not exporting(),
        )
    return describe_problem(query, key, value, index, weight, n_win, num_heads,
                            masked_keys=key_valid is not None)


def routed_attention(
    query: Tensor,
    key: Tensor,
    value: Tensor,
    index: Tensor,
    *,
    n_win: int | tuple[int, int] | None = None,
    num_heads: int,
    scale: float,
    weight: Tensor | None = None,
    key_valid: tuple[int, int] | None = None,
    backend: str | None = None,
    validate: bool = True,
    regions: int | tuple[int, int] | None = None,
) -> Tensor:
    """Each query region attends to all tokens of its routed key regions (multi-head).

    Args:
        query: ``[B, Hq, Wq, Cqk]`` NHWC queries.
        key: ``[B, Hk, Wk, Cqk]`` NHWC keys (``Hk, Wk`` may differ from the queries' when keys
            are downsampled per region; ``n_win`` is the same).
        value: ``[B, Hk, Wk, Cv]`` NHWC values.
        index: ``[B, R, topk]`` integer routed key-region ids per query region (from
            ``topk_routing``), ``R = Rh * Rw``; shared by all heads; values in ``[0, R)``.
        n_win: regions per side, an int or ``(Rh, Rw)``.
        num_heads: attention heads; must divide ``Cqk`` and ``Cv``.
        scale: softmax temperature applied to the queries.
        weight: optional ``[B, R, topk]`` soft-routing weights; gathered keys and values of
            routed region ``j`` are multiplied by ``weight[..., j]`` (differentiable).
        key_valid: optional ``(H, W)``: key tokens outside the top-left ``H x W`` are padding and
            get no attention (off in the official modules, which attend to padded zeros).
        backend: ``None``/``"auto"`` (follow ``use_backend``, the default, then the automatic
            choice), ``"reference"``, ``"chunked"``, ``"flex"`` or ``"triton"`` (see
            ``biformer.ops.dispatch`` for the rule).
        validate: check every argument (the default), the routing ids included: they must lie
            in ``[0, R)`` (one small reduction and host sync per call, see docs/bra.md; skipped
            while tracing for export). ``False`` skips the checks, for callers that validated
            the shapes and built ``index`` with ``topk_routing`` themselves (the BRA layers);
            wrong arguments then give undefined results, though no backend reads outside the
            tensors it is given (an out-of-range id raises or reads nothing).
        regions: deprecated former name of ``n_win``.

    Returns:
        ``[B, Hq, Wq, Cv]`` NHWC output, contiguous.
    """
    rh_rw = _n_win(n_win, regions)
    problem = _problem(query, key, value, index, weight, rh_rw, num_heads, scale, key_valid,
                       validate)
    impl = get_backend(choose_backend(problem, backend))
    if query.shape[0] == 0:  # an empty batch gives an empty result, whichever the backend
        return value.new_empty(0, query.shape[1], query.shape[2], value.shape[-1])
    return impl.routed_attention(
        query, key, value, index, weight, n_win=rh_rw, num_heads=num_heads, scale=scale,
        key_valid=key_valid,
    )


def routed_attention_with_weights(
    query: Tensor,
    key: Tensor,
    value: Tensor,
    index: Tensor,
    *,
    n_win: int | tuple[int, int] | None = None,
    num_heads: int,
    scale: float,
    weight: Tensor | None = None,
    key_valid: tuple[int, int] | None = None,
    validate: bool = True,
    regions: int | tuple[int, int] | None = None,
) -> tuple[Tensor, Tensor]:
    """``routed_attention`` on the reference backend, also returning the attention weights.

    Returns:
        ``(out, attn)``: ``out`` ``[B, Hq, Wq, Cv]``; ``attn`` ``[B*R, heads, Lq, topk*Lk]``
        (softmax probabilities; query tokens and each routed region's key tokens in raster
        order, routed regions in ``index`` order).
    """
    from .backends import reference

    rh_rw = _n_win(n_win, regions)
    _problem(query, key, value, index, weight, rh_rw, num_heads, scale, key_valid, validate)
    return reference.routed_attention_with_weights(
        query, key, value, index, weight, n_win=rh_rw, num_heads=num_heads, scale=scale,
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
    backend: str | None = None,
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
    rh_rw = check_n_win(n_win)
    check_maps(query, key, value, rh_rw, num_heads)
    check_topk(topk, rh_rw[0] * rh_rw[1])
    check_scale(scale)
    q_regions = region_mean(query, rh_rw, validate=False)
    k_regions = region_mean(key, rh_rw, validate=False)
    if not diff_routing:
        q_regions, k_regions = q_regions.detach(), k_regions.detach()
    weights, index = topk_routing(q_regions, k_regions, topk=topk, scale=scale, validate=False)
    out = routed_attention(
        query, key, value, index, n_win=rh_rw, num_heads=num_heads, scale=scale,
        weight=weights if soft_routing else None, backend=backend, validate=False,
    )
    return out, weights, index
