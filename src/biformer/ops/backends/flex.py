"""FlexAttention backend: routed attention as one block-sparse ``flex_attention`` call.

Tokens are reordered region-major (``to_regions``), so every region is a contiguous run of keys,
and the routing becomes a ``BlockMask`` built directly with ``BlockMask.from_kv_blocks`` from the
routed indices: no mask function is ever evaluated over all token pairs. Regions are laid out so
that sparse blocks are powers of two >= 16 (FlexAttention's tiles shrink to them):

* regions of 16+ tokens are padded to a whole number of blocks (16/32/64/128 tokens) and a
  routed region lists its blocks ("full" blocks need no mask at all);
* regions of <= 8 tokens are padded to a power of two and packed several per 16-token block; a
  block pair is listed when any region pair in it is routed, and a ``mask_mod`` reading a small
  ``[B, R, R]`` routing table keeps exactly the routed pairs.

Padded key tokens (and those outside ``key_valid``) are masked; padded queries are dropped.

Soft routing scales routed keys and values by the routing weight ``w``. Scores ``w * s`` are a
``score_mod``; the value scaling is recovered exactly from two log-sum-exps:
``out = flex(score_mod=w*s + log w) * exp(lse(w*s + log w) - lse(w*s))``.

Runs compiled (``torch.compile(flex_attention, dynamic=False)``, one cached kernel per shape).
On CPU FlexAttention has a forward only and returns no log-sum-exp: inference, hard routing.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from ..checks import Problem
from ..regions import from_regions, to_regions

try:
    from torch.nn.attention.flex_attention import BlockMask, flex_attention

    _IMPORT_ERROR = ""
except ImportError as err:  # PyTorch < 2.5
    BlockMask = flex_attention = None  # type: ignore[assignment,misc]
    _IMPORT_ERROR = str(err)

try:
    from torch.nn.attention.flex_attention import AuxRequest
except ImportError:  # PyTorch < 2.9: the log-sum-exp comes from ``return_lse``
    AuxRequest = None  # type: ignore[assignment,misc]

NAME = "flex"
RECOMPILE_LIMIT = 64
_CUDA_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
_CPU_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
_compiled: Callable | None = None


def _cpu_supported() -> bool:
    """Compiled CPU FlexAttention needs AVX2 (x86, Linux or Windows); checked once at import."""
    return (
        bool(torch.cpu._is_avx2_supported())
        and os.environ.get("ATEN_CPU_CAPABILITY") != "default"
        and sys.platform != "darwin"
    )


_CPU_SUPPORTED = _cpu_supported()
_HAS_TRITON = importlib.util.find_spec("triton") is not None  # CUDA kernels are Triton-generated


def can_run(problem: Problem) -> list[str]:
    """Reasons FlexAttention cannot run ``problem`` (empty when it can)."""
    if flex_attention is None:
        return [f"torch.nn.attention.flex_attention is unavailable ({_IMPORT_ERROR}); "
                "it needs PyTorch >= 2.5"]
    reasons = []
    dev, dtype = problem.device_type, problem.dtype
    if dev == "cuda":
        if not _HAS_TRITON:
            reasons.append("compiled FlexAttention on CUDA needs Triton (pip install triton)")
        if dtype not in _CUDA_DTYPES:
            reasons.append(f"dtype {dtype} is not supported on CUDA (float16, bfloat16, float32)")
        if min(problem.qk_head_dim, problem.v_head_dim) < 16:
            reasons.append(
                f"head dims {problem.qk_head_dim}/{problem.v_head_dim} are below 16, the "
                "smallest FlexAttention supports on CUDA; use fewer heads"
            )
    elif dev == "cpu":
        if not _CPU_SUPPORTED:
            reasons.append("compiled FlexAttention needs an x86 CPU with AVX2 on Linux")
        if dtype not in _CPU_DTYPES:
            reasons.append(f"dtype {dtype} is not supported on CPU (float32, bfloat16, float16)")
        if problem.needs_grad:
            reasons.append(
                "FlexAttention has no CPU backward (inputs require grad); run under "
                "torch.no_grad() or use the chunked backend for training"
            )
        if problem.soft_routing:
            reasons.append(
                "soft routing needs the log-sum-exp, which compiled FlexAttention does not "
                "return on CPU"
            )
    else:
        reasons.append(f"FlexAttention runs on CUDA or CPU tensors, not {dev}")
    return reasons


@dataclass(frozen=True)
class Layout:
    """How one side (queries or keys) of the problem is laid out in FlexAttention's sequence.

    Each of ``regions`` regions holds ``tokens`` real tokens padded to ``padded``; the sequence
    (``padded_regions * padded`` long) is cut into sparse blocks of ``block`` tokens, each
    holding ``group`` whole regions (small regions) or one ``1/split`` of a region.
    """

    tokens: int
    padded: int
    block: int
    group: int
    split: int
    regions: int
    padded_regions: int

    @property
    def length(self) -> int:
        return self.padded_regions * self.padded

    @property
    def num_blocks(self) -> int:
        return self.length // self.block


def plan_layout(tokens: int, regions: int) -> Layout:
    """Padding and sparse block size for regions of ``tokens`` tokens (blocks are 2**n >= 16)."""
    if tokens <= 8:  # pack several small regions into one 16-token block
        padded = 1 << (tokens - 1).bit_length()
        group = 16 // padded
        padded_regions = -(-regions // group) * group
        return Layout(tokens, padded, 16, group, 1, regions, padded_regions)
    if tokens <= 16:
        return Layout(tokens, 16, 16, 1, 1, regions, regions)
    sizes = {b: -(-tokens // b) * b for b in (128, 64, 32, 16)}
    block = next((b for b, p in sizes.items() if 8 * p <= 9 * tokens), None)
    if block is None:  # no block within 12.5% padding: the least padding, the larger block
        block = min(sizes, key=lambda b: (sizes[b], -b))
    padded = sizes[block]
    return Layout(tokens, padded, block, 1, padded // block, regions, regions)


def _to_sequence(x: Tensor, regions: tuple[int, int], side: Layout, heads: int) -> Tensor:
    """NHWC ``[B, H, W, C]`` -> ``[B, heads, padded_regions * padded, C // heads]``."""
    t = to_regions(x, regions)  # B, R, L, C
    pad_tokens, pad_regions = side.padded - side.tokens, side.padded_regions - side.regions
    if pad_tokens or pad_regions:
        t = F.pad(t, (0, 0, 0, pad_tokens, 0, pad_regions))  # B, Rp, Lp, C
    b, _, _, c = t.shape
    t = t.reshape(b, side.length, heads, c // heads).transpose(1, 2)
    # the CPU kernel template under an outer torch.compile wants plain 4-D buffers, not views
    return t.contiguous() if t.device.type == "cpu" else t


def _routing_table(index: Tensor, q: Layout, k: Layout) -> Tensor:
    """``[B, Rq_padded, Rk_padded]`` bool: query region i routes key region j."""
    b, r, _ = index.shape
    table = torch.zeros(b, q.padded_regions, k.padded_regions, dtype=torch.bool,
                        device=index.device)
    return table.index_put_(
        (torch.arange(b, device=index.device)[:, None, None],
         torch.arange(r, device=index.device)[None, :, None], index),
        torch.ones((), dtype=torch.bool, device=index.device),
    )


def _key_ok(
    size: tuple[int, int],
    key_valid: tuple[int, int] | None,
    regions: tuple[int, int],
    k: Layout,
    device: torch.device,
) -> Tensor:
    """``[Rk_padded * padded]`` bool: the key token is real (not padding, inside ``key_valid``)."""
    h, w = size
    vh, vw = key_valid if key_valid is not None else size
    grid = (torch.arange(h, device=device)[:, None] < vh) & (
        torch.arange(w, device=device)[None, :] < vw
    )
    ok = to_regions(grid[None, :, :, None], regions)[0, :, :, 0]  # R, Lk
    ok = F.pad(ok, (0, k.padded - k.tokens, 0, k.padded_regions - k.regions))  # pads are False
    return ok.reshape(-1)


def _pad_columns(x: Tensor, width: int) -> Tensor:
    return F.pad(x, (0, width - x.shape[-1])) if x.shape[-1] < width else x


def _blocks_from_index(index: Tensor, q: Layout, k: Layout, mask_all: bool):
    """Block lists when every block holds (part of) one region: straight from ``index``.

    Returns ``(num, idx, full_num, full_idx)`` (``[B, 1, q_blocks]`` and
    ``[B, 1, q_blocks, k_blocks]`` int32): the key blocks that need the mask, then the others.
    """
    b, r, _ = index.shape
    sub = torch.arange(k.split, device=index.device, dtype=torch.int32)
    blocks = index.to(torch.int32)[..., None] * k.split + sub  # B, R, topk, split
    # masked keys: anywhere under key_valid, else only in the last block of a padded region
    masked = k.split if mask_all else int(k.padded != k.tokens)
    cut = k.split - masked
    out = []
    for lists in (blocks[..., cut:], blocks[..., :cut]):
        lists = lists.reshape(b, r, -1).repeat_interleave(q.split, dim=1)  # B, q_blocks, n
        num = torch.full((b, 1, lists.shape[1]), lists.shape[-1], dtype=torch.int32,
                         device=index.device)
        out += [num, _pad_columns(lists, k.num_blocks)[:, None].contiguous()]
    return tuple(out)


def _ordered(table: Tensor) -> tuple[Tensor, Tensor]:
    """Dense ``[B, q_blocks, k_blocks]`` bool -> ``(num [B,1,q], idx [B,1,q,k])`` int32."""
    num = table.sum(-1, dtype=torch.int32)[:, None]
    idx = torch.argsort(table.to(torch.uint8), dim=-1, descending=True, stable=True)
    return num, idx.to(torch.int32)[:, None].contiguous()


def _blocks_from_table(routed: Tensor, key_ok: Tensor | None, q: Layout, k: Layout):
    """Block lists for packed layouts, from the region routing table ``[B, Rq_p, Rk_p]``."""
    b = routed.shape[0]
    groups = routed.view(b, q.padded_regions // q.group, q.group,
                         k.padded_regions // k.group, k.group)
    any_pair = groups.any(dim=4).any(dim=2)  # B, q_groups, k_groups
    all_pairs = groups.all(dim=4).all(dim=2)
    if key_ok is not None:
        clean = key_ok.view(-1, k.block).all(dim=-1)  # k_blocks: no masked key token
        all_pairs = all_pairs.repeat_interleave(k.split, dim=2) & clean
        any_pair = any_pair.repeat_interleave(k.split, dim=2)
    else:
        all_pairs = all_pairs.repeat_interleave(k.split, dim=2)
        any_pair = any_pair.repeat_interleave(k.split, dim=2)
    any_pair = any_pair.repeat_interleave(q.split, dim=1)
    all_pairs = all_pairs.repeat_interleave(q.split, dim=1)
    return (*_ordered(any_pair & ~all_pairs), *_ordered(all_pairs))


@dataclass(frozen=True)
class FlexPlan:
    """The layouts of both sides, the block mask and the routing it encodes."""

    q: Layout
    k: Layout
    block_mask: BlockMask
    index: Tensor


def build_block_mask(
    index: Tensor,
    *,
    regions: tuple[int, int],
    q_tokens: int,
    key_size: tuple[int, int],
    key_valid: tuple[int, int] | None = None,
    for_backward: bool = False,
    exact_mask_mod: bool = False,
) -> FlexPlan:
    """The ``BlockMask`` of a routing ``index`` ``[B, R, topk]`` on region-major tokens.

    ``exact_mask_mod`` makes the mask function check the routing of every pair (for the eager,
    unfused FlexAttention, which ignores the block lists); the compiled kernel does not need it.
    """
    r = regions[0] * regions[1]
    k_tokens = (key_size[0] // regions[0]) * (key_size[1] // regions[1])
    q, k = plan_layout(q_tokens, r), plan_layout(k_tokens, r)
    device = index.device
    index = index.long()
    padded_keys = k.padded != k.tokens or k.padded_regions != k.regions
    key_ok = None
    if padded_keys or key_valid is not None:
        key_ok = _key_ok(key_size, key_valid, regions, k, device)
    packed = q.group > 1 or k.group > 1
    routed = _routing_table(index, q, k) if packed or exact_mask_mod else None
    if packed:
        lists = _blocks_from_table(routed, key_ok, q, k)
    else:
        lists = _blocks_from_index(index, q, k, mask_all=key_valid is not None)
    mask_mod = _make_mask_mod(routed, key_ok, q.padded, k.padded)
    block_mask = BlockMask.from_kv_blocks(
        *lists,
        BLOCK_SIZE=(q.block, k.block),
        mask_mod=mask_mod,
        seq_lengths=(q.length, k.length),
        compute_q_blocks=for_backward,
    )
    return FlexPlan(q, k, block_mask, index)


def _make_mask_mod(routed: Tensor | None, key_ok: Tensor | None, lq: int, lk: int):
    """``mask_mod`` keeping routed region pairs (``routed`` ``[B, Rq_p, Rk_p]``) and real keys
    (``key_ok`` ``[Nk]``) of the padded sequences (``lq``/``lk`` tokens per region); None when
    the block lists alone are exact."""
    if routed is None and key_ok is None:
        return None
    if routed is None:

        def keys_only(b, h, q_idx, kv_idx):
            return key_ok[kv_idx]

        return keys_only
    if key_ok is None:

        def routed_only(b, h, q_idx, kv_idx):
            return routed[b, q_idx // lq, kv_idx // lk]

        return routed_only

    def routed_keys(b, h, q_idx, kv_idx):
        return routed[b, q_idx // lq, kv_idx // lk] & key_ok[kv_idx]

    return routed_keys


def _flex_call(q, k, v, block_mask, score_mod, scale, want_lse):
    """One FlexAttention call; returns ``(out, lse or None)``."""
    # short sequences would pick the decoding kernel, which has its own tile rules
    options = {"FORCE_USE_FLEX_ATTENTION": True} if q.device.type == "cuda" else None
    kw = dict(score_mod=score_mod, block_mask=block_mask, scale=scale, kernel_options=options)
    if not want_lse:
        return flex_attention(q, k, v, **kw), None
    if AuxRequest is not None:
        out, aux = flex_attention(q, k, v, return_aux=AuxRequest(lse=True), **kw)
        return out, aux.lse
    return flex_attention(q, k, v, return_lse=True, **kw)


def _run(compiled: bool, *args):
    """Call FlexAttention compiled (one cached kernel per shape) or eagerly (unfused)."""
    global _compiled
    if not compiled or torch.compiler.is_compiling():  # inside torch.compile: traced as is
        return _flex_call(*args)
    if _compiled is None:
        _compiled = torch.compile(_flex_call, dynamic=False)
    limit = max(torch._dynamo.config.recompile_limit, RECOMPILE_LIMIT)
    with torch._dynamo.config.patch(recompile_limit=limit):  # one entry per problem shape
        return _compiled(*args)


def _soft_score_mods(weight: Tensor, plan: FlexPlan):
    """``score_mod``s ``w*s`` and ``w*s + log w`` reading a ``[B, Rq_p, Rk_p]`` weight table."""
    b, r, _ = weight.shape
    q, k = plan.q, plan.k
    table = weight.new_ones(b, q.padded_regions, k.padded_regions)
    rows = torch.arange(b, device=weight.device)[:, None, None]
    cols = torch.arange(r, device=weight.device)[None, :, None]
    table = table.index_put((rows, cols, plan.index), weight)
    log_table = table.log()  # a separate tensor: each captured table is indexed once
    lq, lk = q.padded, k.padded

    def scaled(score, b, h, q_idx, kv_idx):
        return score * table[b, q_idx // lq, kv_idx // lk]

    def scaled_logw(score, b, h, q_idx, kv_idx):
        return score * table[b, q_idx // lq, kv_idx // lk] + log_table[b, q_idx // lq, kv_idx // lk]

    return scaled, scaled_logw


def routed_attention(
    query: Tensor,
    key: Tensor,
    value: Tensor,
    index: Tensor,
    weight: Tensor | None,
    *,
    n_win: tuple[int, int],
    num_heads: int,
    scale: float,
    key_valid: tuple[int, int] | None = None,
    compiled: bool = True,
) -> Tensor:
    """Routed attention on FlexAttention, NHWC in and out; see ``biformer.ops.routed_attention``.

    ``compiled=False`` runs FlexAttention's eager, unfused path (it materialises every score:
    for checking small problems only).
    """
    b, hq, wq, _ = query.shape
    if query.device.type == "cpu":  # CPU FlexAttention refuses tensors that require grad
        query, key, value = query.detach(), key.detach(), value.detach()
    r = n_win[0] * n_win[1]
    needs_grad = torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (query, key, value, weight)
    )
    plan = build_block_mask(
        index,
        regions=n_win,
        q_tokens=(hq // n_win[0]) * (wq // n_win[1]),
        key_size=(key.shape[1], key.shape[2]),
        key_valid=key_valid,
        for_backward=needs_grad,
        exact_mask_mod=not compiled,
    )
    q = _to_sequence(query, n_win, plan.q, num_heads)  # B, m, Nq, d
    k = _to_sequence(key, n_win, plan.k, num_heads)  # B, m, Nk, d
    v = _to_sequence(value, n_win, plan.k, num_heads)  # B, m, Nk, dv
    scale = float(scale)
    if weight is None:
        out, _ = _run(compiled, q, k, v, plan.block_mask, None, scale, False)
    else:
        scaled, scaled_logw = _soft_score_mods(weight.float(), plan)
        _, lse_plain = _run(compiled, q, k, v, plan.block_mask, scaled, scale, True)
        out, lse_logw = _run(compiled, q, k, v, plan.block_mask, scaled_logw, scale, True)
        # fully masked rows (padding) have lse -inf: keep their zeros, and NaN out of backward
        log_ratio = torch.where(torch.isfinite(lse_plain), lse_logw - lse_plain, 0.0)
        out = out * torch.exp(log_ratio).unsqueeze(-1).to(out.dtype)
    out = out.transpose(1, 2).reshape(b, plan.q.padded_regions, plan.q.padded, -1)
    out = out[:, :r, : plan.q.tokens]  # B, R, Lq, Cv
    return from_regions(out, n_win, (hq, wq))
