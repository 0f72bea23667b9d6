"""Launch plans (cache hits and misses), tile choice and overrides, the packed q|k|v gradient,
and the custom ops (``torch.library.opcheck``, autocast rule, non-differentiable LSE)."""

import pytest
import torch

from biformer.ops.backends import triton as triton_backend

pytest.importorskip("triton", reason="the triton backend needs the triton package")

from biformer.ops.backends.triton import plan as plans  # noqa: E402
from biformer.ops.backends.triton import tiles  # noqa: E402
from biformer.ops.backends.triton.tile_table import TABLE  # noqa: E402

from .test_triton_helpers import DEVICE, assert_all_close, projection, random_index, run_both  # noqa: E402, I001

TileConfig = triton_backend.TileConfig
KW = dict(n_win=(2, 2), num_heads=2, scale=0.3)


def _call(x, index, weight=None, **kw):
    q, k, v = x.split(32, dim=-1)
    return triton_backend.routed_attention(q, k, v, index, weight, **{**KW, **kw})


def test_plan_is_built_once_per_shape_and_reused_by_backward():
    plans.clear_cache()
    x, _ = projection(1, 4, 4, 32)
    index = random_index(1, 4, 2).to(DEVICE)
    out = _call(x, index)
    out.sum().backward()  # the backward takes the forward's plan: no lookup
    assert plans.cache_info() == {"hits": 0, "misses": 1, "size": 1}
    _call(x, index).sum().backward()
    assert plans.cache_info() == {"hits": 1, "misses": 1, "size": 1}
    _call(torch.randn(2, 4, 4, 96, device=DEVICE), random_index(2, 4, 2).to(DEVICE))  # new shape
    _call(x, index, scale=0.5)  # new scale
    with triton_backend.use_tiles(TileConfig(block_n=16)):  # new tiles
        _call(x, index)
    assert plans.cache_info() == {"hits": 1, "misses": 4, "size": 4}


def test_plan_cache_is_bounded(monkeypatch):
    plans.clear_cache()
    monkeypatch.setattr(plans, "CACHE_SIZE", 2)
    x = torch.randn(1, 4, 4, 96, device=DEVICE)
    index = random_index(1, 4, 2).to(DEVICE)
    for scale in (0.1, 0.2, 0.3):
        _call(x, index, scale=scale)
    assert plans.cache_info()["size"] == 2


def test_plan_holds_every_kernel_argument_by_name():
    from biformer.ops.backends.triton.kernels import KERNELS

    x = torch.randn(2, 8, 8, 96, device=DEVICE)
    q, k, v = x.split(32, dim=-1)
    plan = plans.get_plan(q, k, v, 16, soft=True, n_win=(4, 4), heads=2, scale=0.3,
                          config=TileConfig(chunk_rows=8))
    assert plan.split and plan.reduce is not None  # 16 regions x 16 slots > 2-entry chunks
    tensors = {"Q", "K", "V", "IDX", "W", "OUT", "LSE", "DO", "DELTA", "DQ", "DW", "SORTED",
               "ENTRIES", "OFFSETS", "DK", "DV", "PART_K", "PART_V"}
    per_call = {"sdob", "sdoh", "sdow", "sdoc"}  # the incoming gradient's strides
    for kernel in (plan.fwd, plan.dq, plan.dkdv, plan.reduce):
        names = set(KERNELS[kernel.name].arg_names)
        assert names - tensors - per_call == set(kernel.fixed), kernel.name
    assert plan.fwd.fixed["N_REGIONS"] == 16 and plan.fwd.fixed["TOPK"] == 16


def test_tiles_come_from_override_then_table_then_heuristic():
    key = tiles.ShapeKey(torch.bfloat16, 64, 64, 1, 32, 32, False)
    assert str(key) in TABLE
    assert tiles.plan_tiles(key).block_m == TABLE[str(key)]["block_m"]
    small = tiles.plan_tiles(key, TileConfig(block_m=16, num_warps=8, num_stages=2))
    assert (small.block_m, small.q_tiles, small.num_warps, small.num_stages) == (16, 4, 8, 2)
    packed = tiles.plan_tiles(tiles.ShapeKey(torch.float32, 4, 4, 16, 32, 32, False),
                              TileConfig(block_m=32))
    assert (packed.gq, packed.q_tiles, packed.block_n) == (8, 1, 64)
    for bad in (TileConfig(block_m=24), TileConfig(bwd_block_n=8), TileConfig(num_warps=3),
                TileConfig(chunk_rows=0)):
        with pytest.raises(ValueError):
            tiles.plan_tiles(key, bad)


def test_committed_table_entries_are_valid_configs():
    for name, entry in TABLE.items():
        dtype, q, k, topk, dims, mode = name.split("/")
        dqk, dv = (int(d) for d in dims[1:].split("x"))
        key = tiles.ShapeKey(getattr(torch, dtype), int(q[1:]), int(k[1:]), int(topk[4:]), dqk,
                             dv, mode == "soft")
        assert str(key) == name
        tiles.plan_tiles(key, TileConfig(**entry))  # raises on a bad entry


@pytest.mark.parametrize("config", [
    TileConfig(block_m=16, block_n=16),  # query tiles + online softmax over 4 key tiles
    TileConfig(bwd_block_m=16, bwd_block_n=16, chunk_rows=32),  # dK/dV key tiles and chunks
    TileConfig(num_warps=2, bwd_num_warps=8, num_stages=1),
], ids=["fwd-tiles", "bwd-tiles", "warps"])
def test_tile_overrides_keep_results_exact(config):
    b, n_win, side, heads = 1, 2, 8, 2
    proj, (q, k, v) = projection(b, n_win * side, n_win * side, heads * 16)
    index = random_index(b, 4, 2).to(DEVICE)
    weight = torch.rand(b, 4, 2, device=DEVICE, requires_grad=True)
    with triton_backend.use_tiles(config):
        outs, grads = run_both(q, k, v, index, [proj, weight], n_win=n_win, heads=heads,
                               weight=weight)
    assert_all_close(outs, grads)


# ------------------------------------------------------------------------------------------------
# the packed q|k|v gradient and the NHWC hand-off


def test_packed_view_recognises_one_projection_only():
    x = torch.randn(1, 4, 4, 96)
    assert triton_backend.packed_view(*x.split(32, dim=-1)) is x
    nchw = torch.randn(1, 96, 4, 4)
    view = triton_backend.packed_view(*nchw.permute(0, 2, 3, 1).split(32, dim=-1))
    assert view is not None and view.shape == (1, 4, 4, 96) and view.stride(-1) == 16
    q, k, v = x.split(32, dim=-1)
    assert triton_backend.packed_view(q, v, k) is None  # not in q|k|v order
    assert triton_backend.packed_view(q, k, x[..., 64:80]) is None  # not the whole buffer
    assert triton_backend.packed_view(q, k, torch.randn(1, 4, 4, 32)) is None


def test_packed_projection_gets_one_gradient_without_cat():
    proj, (q, k, v) = projection(1, 4, 4, 32)
    out = triton_backend.routed_attention(q, k, v, random_index(1, 4, 2).to(DEVICE), None, **KW)
    producer = out.grad_fn.next_functions[0][0]  # straight to the leaf: no SplitBackward
    assert type(producer).__name__ == "AccumulateGrad" and producer.variable is proj


def test_nchw_views_are_handed_off_as_one_nhwc_copy():
    nchw = torch.randn(1, 96, 4, 4, device=DEVICE, requires_grad=True)
    q, k, v = nchw.permute(0, 2, 3, 1).split(32, dim=-1)
    index = random_index(1, 4, 2).to(DEVICE)
    outs, grads = run_both(q, k, v, index, [nchw], n_win=2, heads=2)
    assert_all_close(outs, grads)
    chain, fn = [], outs[0].grad_fn
    while fn is not None and len(chain) < 4:
        chain.append(type(fn).__name__)
        fn = fn.next_functions[0][0] if fn.next_functions else None
    assert chain[:2] == ["RoutedAttentionBackward", "CloneBackward0"], chain


# ------------------------------------------------------------------------------------------------
# custom ops


def _op_args(soft=True, requires_grad=True):
    x = torch.randn(1, 4, 4, 96, device=DEVICE)
    q, k, v = (t.contiguous().requires_grad_(requires_grad) for t in x.split(32, dim=-1))
    index = random_index(1, 4, 2).to(DEVICE, torch.int32)
    weight = torch.rand(1, 4, 2, device=DEVICE, requires_grad=requires_grad) if soft else None
    return q, k, v, index, weight, [2, 2], 2, 0.3, None


@pytest.mark.slow
def test_opcheck_forward_op():
    torch.library.opcheck(torch.ops.biformer.routed_attention_fwd.default, _op_args())


@pytest.mark.slow
def test_opcheck_backward_op():
    q, k, v, index, weight, *rest = _op_args(requires_grad=False)
    out, lse = torch.ops.biformer.routed_attention_fwd(q, k, v, index, weight, *rest)
    args = (torch.randn_like(out), q, k, v, index, weight, out, lse, *rest, True)
    torch.library.opcheck(torch.ops.biformer.routed_attention_bwd.default, args,
                          test_utils=("test_schema", "test_faketensor"))


def test_lse_output_is_not_differentiable():
    out, lse = torch.ops.biformer.routed_attention_fwd(*_op_args())
    assert out.requires_grad and not lse.requires_grad


def test_autocast_rule_casts_queries_keys_and_values():
    args = _op_args(requires_grad=False)
    with torch.autocast(DEVICE, dtype=torch.bfloat16):
        out, lse = torch.ops.biformer.routed_attention_fwd(*args)  # the custom op
        eager = _call(torch.cat(args[:3], dim=-1), args[3], args[4])  # the eager path
    assert out.dtype == eager.dtype == torch.bfloat16 and lse.dtype == torch.float32
    want, _ = torch.ops.biformer.routed_attention_fwd(
        *(t.bfloat16() for t in args[:3]), *args[3:])
    assert torch.equal(out, want) and torch.equal(eager, want)

