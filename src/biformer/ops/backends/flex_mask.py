"""Block masks of the FlexAttention backend: the routing as FlexAttention's sparse block lists.

Tokens are reordered region-major (``to_regions``), so every region is a contiguous run of keys,
and the routing becomes a ``BlockMask`` built directly with ``BlockMask.from_kv_blocks`` from the
routed ids: no mask function is ever evaluated over all token pairs. Regions are laid out so
that sparse blocks are powers of two >= 16 (FlexAttention's tiles shrink to them):

* regions of 16+ tokens are padded to a whole number of blocks (16/32/64/128 tokens) and a
  routed region lists its blocks ("full" blocks need no mask at all);
* regions of <= 8 tokens are padded to a power of two and packed several per 16-token block; a
  block pair is listed when any region pair in it is routed, and a ``mask_mod`` reading a small
  ``[B, Rq, Rk]`` routing table keeps exactly the routed pairs.

Padded key tokens (and those outside ``key_valid``) are masked; padded queries are dropped.
Routing ids outside ``[0, num_regions)`` route nothing: they are left out of the block lists
and of the routing table, so no kernel reads past the routed regions of its own image.

FlexAttention is imported on first use (its import pulls sympy, about a second).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor

from ..regions import to_regions

if TYPE_CHECKING:
    from torch.nn.attention.flex_attention import BlockMask

__all__ = ["FlexPlan", "Layout", "build_block_mask", "plan_layout"]


@dataclass(frozen=True)
class Layout:
    """How one side (queries or keys) of the problem is laid out in FlexAttention's sequence.

    Each of ``num_regions`` regions holds ``tokens`` real tokens padded to ``padded``; the
    sequence (``padded_num_regions * padded`` long) is cut into sparse blocks of ``block``
    tokens, each holding ``group`` whole regions (small regions) or one ``1/split`` of a region.
    """

    tokens: int
    padded: int
    block: int
    group: int
    split: int
    num_regions: int
    padded_num_regions: int

    @property
    def length(self) -> int:
        return self.padded_num_regions * self.padded

    @property
    def num_blocks(self) -> int:
        return self.length // self.block


def plan_layout(tokens: int, num_regions: int) -> Layout:
    """Padding and sparse block size for regions of ``tokens`` tokens (blocks are 2**n >= 16)."""
    if tokens <= 8:  # pack several small regions into one 16-token block
        padded = 1 << (tokens - 1).bit_length()
        group = 16 // padded
        padded_num = -(-num_regions // group) * group
        return Layout(tokens, padded, 16, group, 1, num_regions, padded_num)
    if tokens <= 16:
        return Layout(tokens, 16, 16, 1, 1, num_regions, num_regions)
    sizes = {b: -(-tokens // b) * b for b in (128, 64, 32, 16)}
    block = next((b for b, p in sizes.items() if 8 * p <= 9 * tokens), None)
    if block is None:  # no block within 12.5% padding: the least padding, the larger block
        block = min(sizes, key=lambda b: (sizes[b], -b))
    padded = sizes[block]
    return Layout(tokens, padded, block, 1, padded // block, num_regions, num_regions)


def _columns(index: Tensor, k: Layout) -> Tensor:
    """Routing ids ``[B, R, topk]`` as key-region columns: an id outside ``[0, R)`` becomes
    ``k.padded_num_regions``, a spare column past every real and padded key region."""
    index = index.long()
    inside = (index >= 0) & (index < k.num_regions)
    return torch.where(inside, index, k.padded_num_regions)


def _routing_table(columns: Tensor, q: Layout, k: Layout) -> Tensor:
    """``[B, Rq_padded, Rk_padded]`` bool: query region i routes key region j."""
    b, r, _ = columns.shape
    device = columns.device
    table = torch.zeros(b, q.padded_num_regions, k.padded_num_regions + 1, dtype=torch.bool,
                        device=device)
    table.index_put_(
        (torch.arange(b, device=device)[:, None, None],
         torch.arange(r, device=device)[None, :, None], columns),
        torch.ones((), dtype=torch.bool, device=device),
    )
    return table[..., :-1].contiguous()  # the spare column (ids out of range) routes nothing


def _key_ok(
    size: tuple[int, int],
    key_valid: tuple[int, int] | None,
    n_win: tuple[int, int],
    k: Layout,
    device: torch.device,
) -> Tensor:
    """``[Rk_padded * padded]`` bool: the key token is real (not padding, inside ``key_valid``)."""
    h, w = size
    vh, vw = key_valid if key_valid is not None else size
    grid = (torch.arange(h, device=device)[:, None] < vh) & (
        torch.arange(w, device=device)[None, :] < vw
    )
    ok = to_regions(grid[None, :, :, None], n_win)[0, :, :, 0]  # R, Lk
    pad_regions = k.padded_num_regions - k.num_regions
    ok = F.pad(ok, (0, k.padded - k.tokens, 0, pad_regions))  # pads are False
    return ok.reshape(-1)


def _pad_columns(x: Tensor, width: int) -> Tensor:
    return F.pad(x, (0, width - x.shape[-1])) if x.shape[-1] < width else x


def _blocks_from_index(columns: Tensor, q: Layout, k: Layout, mask_all: bool):
    """Block lists when every block holds (part of) one region: straight from the routed ids.

    Returns ``(num, idx, full_num, full_idx)`` (``[B, 1, q_blocks]`` and
    ``[B, 1, q_blocks, k_blocks]`` int32): the key blocks that need the mask, then the others.
    Ids out of range (``columns == R``) are moved behind the real ones and not counted.
    """
    b, r, _ = columns.shape
    inside = columns < k.num_regions
    order = torch.argsort((~inside).to(torch.uint8), dim=-1, stable=True)  # real ids first
    ids = torch.where(inside, columns, 0).gather(-1, order).to(torch.int32)
    count = inside.sum(-1, dtype=torch.int32)  # B, R: real ids per query region
    sub = torch.arange(k.split, device=columns.device, dtype=torch.int32)
    blocks = ids[..., None] * k.split + sub  # B, R, topk, split
    # masked keys: anywhere under key_valid, else only in the last block of a padded region
    masked = k.split if mask_all else int(k.padded != k.tokens)
    cut = k.split - masked
    out = []
    for lists, width in ((blocks[..., cut:], masked), (blocks[..., :cut], cut)):
        lists = lists.reshape(b, r, -1).repeat_interleave(q.split, dim=1)  # B, q_blocks, n
        num = (count * width).repeat_interleave(q.split, dim=1)[:, None].contiguous()
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
    groups = routed.view(b, q.padded_num_regions // q.group, q.group,
                         k.padded_num_regions // k.group, k.group)
    any_pair = groups.any(dim=4).any(dim=2).repeat_interleave(k.split, dim=2)  # B, qg, kb
    all_pairs = groups.all(dim=4).all(dim=2).repeat_interleave(k.split, dim=2)
    if key_ok is not None:
        all_pairs = all_pairs & key_ok.view(-1, k.block).all(dim=-1)  # no masked key token
    any_pair = any_pair.repeat_interleave(q.split, dim=1)
    all_pairs = all_pairs.repeat_interleave(q.split, dim=1)
    return (*_ordered(any_pair & ~all_pairs), *_ordered(all_pairs))


@dataclass(frozen=True)
class FlexPlan:
    """The layouts of both sides, the block mask and the routing it encodes (``columns``:
    the routed ids, those out of range replaced by the spare column ``k.padded_num_regions``)."""

    q: Layout
    k: Layout
    block_mask: BlockMask
    columns: Tensor


def build_block_mask(
    index: Tensor,
    *,
    n_win: tuple[int, int],
    q_tokens: int,
    key_size: tuple[int, int],
    key_valid: tuple[int, int] | None = None,
    for_backward: bool = False,
    exact_mask_mod: bool = False,
) -> FlexPlan:
    """The ``BlockMask`` of a routing ``index`` ``[B, R, topk]`` on region-major tokens.

    ``n_win`` is the region grid, ``q_tokens`` the tokens of a query region, ``key_size`` the
    ``(H, W)`` of the key map. ``exact_mask_mod`` makes the mask function check the routing of
    every pair (for the eager, unfused FlexAttention, which ignores the block lists); the
    compiled kernel does not need it.
    """
    from torch.nn.attention.flex_attention import BlockMask

    r = n_win[0] * n_win[1]
    k_tokens = (key_size[0] // n_win[0]) * (key_size[1] // n_win[1])
    q, k = plan_layout(q_tokens, r), plan_layout(k_tokens, r)
    columns = _columns(index, k)
    padded_keys = k.padded != k.tokens or k.padded_num_regions != k.num_regions
    key_ok = None
    if padded_keys or key_valid is not None:
        key_ok = _key_ok(key_size, key_valid, n_win, k, index.device)
    packed = q.group > 1 or k.group > 1
    routed = _routing_table(columns, q, k) if packed or exact_mask_mod else None
    if packed:
        lists = _blocks_from_table(routed, key_ok, q, k)
    else:
        lists = _blocks_from_index(columns, q, k, mask_all=key_valid is not None)
    block_mask = BlockMask.from_kv_blocks(
        *lists,
        BLOCK_SIZE=(q.block, k.block),
        mask_mod=_make_mask_mod(routed, key_ok, q.padded, k.padded),
        seq_lengths=(q.length, k.length),
        compute_q_blocks=for_backward,
    )
    return FlexPlan(q, k, block_mask, columns)


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
