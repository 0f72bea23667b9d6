"""The FlexAttention backend: layouts, block lists, CPU forward (compiled), CUDA fwd/bwd."""

import dataclasses
import subprocess
import sys
import warnings

import pytest
import torch
from torch.nn.attention.flex_attention import noop_mask

from biformer import ops
from biformer.layers import BiLevelRoutingAttention, BRA2d
from biformer.ops.backends import flex
from biformer.ops.checks import Problem

from .oracles import dense_routed_attention

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
needs_cpu_flex = pytest.mark.skipif(
    not flex._CPU_SUPPORTED, reason="compiled CPU FlexAttention needs an AVX2 x86 CPU"
)


def _routing(b, r, topk, device="cpu"):
    rows = [torch.stack([torch.randperm(r)[:topk] for _ in range(r)]) for _ in range(b)]
    return torch.stack(rows).to(device)


def _inputs(b, n_win, q_region_size, kv_region_size, topk, heads, head_dim, device="cpu",
            dtype=torch.float32):
    (rh, rw), (sh, sw), (kh, kw) = n_win, q_region_size, kv_region_size
    c = heads * head_dim
    q = torch.randn(b, rh * sh, rw * sw, c, device=device, dtype=dtype)
    k = torch.randn(b, rh * kh, rw * kw, c, device=device, dtype=dtype)
    v = torch.randn(b, rh * kh, rw * kw, c, device=device, dtype=dtype)
    return q, k, v, _routing(b, rh * rw, topk, device)


def _problem(**changes):
    base = Problem(
        device_type="cpu", dtype=torch.float32, batch=2, n_win=(7, 7), q_region_size=(8, 8),
        kv_region_size=(8, 8), topk=1, num_heads=2, qk_head_dim=32, v_head_dim=32,
        soft_routing=False, masked_keys=False, needs_grad=False,
    )
    return dataclasses.replace(base, **changes)


# ---------------------------------------------------------------- layouts and block lists


@pytest.mark.parametrize(
    "tokens,block,padded,group",
    [(64, 64, 64, 1), (16, 16, 16, 1), (4, 16, 4, 4), (3, 16, 4, 4), (1, 16, 1, 16),
     (9, 16, 16, 1), (49, 64, 64, 1), (144, 32, 160, 1), (6035, 128, 6144, 1)],
)
def test_plan_layout_known_sizes(tokens, block, padded, group):
    lay = flex.plan_layout(tokens, 49)
    assert (lay.block, lay.padded, lay.group) == (block, padded, group)


def test_plan_layout_invariants():
    for tokens in range(1, 400):
        lay = flex.plan_layout(tokens, 10)
        assert lay.block >= 16 and lay.block & (lay.block - 1) == 0  # power of two >= 16
        assert lay.padded >= tokens
        assert lay.length % lay.block == 0
        assert lay.padded_num_regions % lay.group == 0 and lay.padded_num_regions >= 10
        if lay.group > 1:
            assert lay.group * lay.padded == lay.block
        else:
            assert lay.split * lay.block == lay.padded


def _dense_blocks(num, idx, n_cols):
    """Block lists ``[B,1,q]``/``[B,1,q,k]`` -> dense bool ``[B, q, k]``."""
    b, _, rows = num.shape
    dense = torch.zeros(b, rows, n_cols + 1, dtype=torch.bool)
    valid = torch.arange(idx.shape[-1]) < num[:, 0, :, None]
    cols = torch.where(valid, idx[:, 0].long(), n_cols)
    dense.scatter_(2, cols, True)
    return dense[..., :n_cols]


@pytest.mark.parametrize(
    "n_win,q_region_size,kv_region_size,topk,key_valid",
    [
        ((7, 7), (8, 8), (8, 8), 1, None),  # BiFormer stage 1: whole 64-token blocks
        ((7, 7), (4, 4), (4, 4), 4, None),  # stage 2
        ((7, 7), (2, 2), (2, 2), 16, None),  # stage 3: four regions packed per block
        ((3, 3), (3, 3), (3, 3), 2, None),  # 9 tokens padded to 16
        ((2, 3), (12, 12), (12, 12), 3, None),  # 144 tokens: five 32-token blocks
        ((4, 4), (4, 4), (2, 2), 3, None),  # downsampled keys packed, queries whole
        ((5, 5), (3, 1), (8, 8), 4, None),  # packed queries, whole keys
        ((3, 3), (5, 6), (5, 6), 4, (13, 16)),  # padded keys masked (key_valid)
        ((2, 2), (2, 3), (2, 3), 2, (3, 5)),
    ],
)
def test_block_mask_admits_exactly_the_routed_keys(n_win, q_region_size, kv_region_size, topk,
                                                   key_valid):
    b = 2
    index = _routing(b, n_win[0] * n_win[1], topk)
    check_block_mask(index, n_win, q_region_size, kv_region_size, key_valid)


def check_block_mask(index, n_win, q_region_size, kv_region_size, key_valid):
    """The plan's block lists and mask_mod admit exactly the routed, real keys (brute force on
    the padded sequences); ids outside [0, R) route nothing."""
    b, r = index.shape[0], n_win[0] * n_win[1]
    key_size = (n_win[0] * kv_region_size[0], n_win[1] * kv_region_size[1])
    plan = flex.build_block_mask(
        index, n_win=n_win, q_tokens=q_region_size[0] * q_region_size[1], key_size=key_size,
        key_valid=key_valid, for_backward=True,
    )
    q, k, bm = plan.q, plan.k, plan.block_mask
    assert bm.BLOCK_SIZE == (q.block, k.block)
    partial = _dense_blocks(bm.kv_num_blocks, bm.kv_indices, k.num_blocks)
    full = _dense_blocks(bm.full_kv_num_blocks, bm.full_kv_indices, k.num_blocks)
    assert not (partial & full).any()
    expand = lambda t: t.repeat_interleave(q.block, 1).repeat_interleave(k.block, 2)  # noqa: E731
    qi = torch.arange(q.length)[None, :, None]
    ki = torch.arange(k.length)[None, None, :]
    bi = torch.arange(b)[:, None, None]
    if bm.mask_mod is not None and partial.any():
        mod = bm.mask_mod(bi, torch.zeros((), dtype=torch.long), qi, ki)
    else:
        mod = torch.zeros((), dtype=torch.bool)
    allowed = expand(full) | (expand(partial) & mod)  # B, Nq, Nk

    # brute force on the padded sequence
    inside = (index >= 0) & (index < r)
    routed = torch.zeros(b, r, r + 1, dtype=torch.bool)
    routed = routed.scatter(2, torch.where(inside, index, r), True)[..., :r]
    qr, kr, kpos = qi // q.padded, ki // k.padded, ki % k.padded
    vh, vw = key_valid or key_size
    ky = (kr // n_win[1]) * kv_region_size[0] + kpos // kv_region_size[1]
    kx = (kr % n_win[1]) * kv_region_size[1] + kpos % kv_region_size[1]
    key_real = (kpos < k.tokens) & (kr < r) & (ky < vh) & (kx < vw)
    want = routed[bi, qr.clamp(max=r - 1), kr.clamp(max=r - 1)] & key_real
    real_rows = ((qi % q.padded) < q.tokens) & (qi // q.padded < r)
    rows = real_rows[0, :, 0]
    assert torch.equal(allowed[:, rows], want.expand(b, -1, -1)[:, rows])
    # the q-side lists for the backward are the transpose of the kv-side ones
    assert bm.q_num_blocks is not None


def test_block_mask_skips_the_transposed_lists_for_inference():
    index = _routing(1, 4, 2)
    plan = flex.build_block_mask(index, n_win=(2, 2), q_tokens=16, key_size=(8, 8))
    assert plan.block_mask.q_num_blocks is None
    assert plan.block_mask.mask_mod is noop_mask  # whole, unpadded regions: nothing to mask
    assert int(plan.block_mask.full_kv_num_blocks[0, 0, 0]) == 2
    assert int(plan.block_mask.kv_num_blocks.sum()) == 0


# ---------------------------------------------------------------- refusals


def test_can_run_explains_refusals():
    assert flex.can_run(_problem()) == []
    (why,) = flex.can_run(_problem(needs_grad=True))
    assert "no CPU backward" in why and "chunked" in why
    (why,) = flex.can_run(_problem(soft_routing=True))
    assert "soft routing" in why
    (why,) = flex.can_run(_problem(dtype=torch.float64))
    assert "float64" in why
    (why,) = flex.can_run(_problem(device_type="mps"))
    assert "mps" in why
    (why,) = flex.can_run(_problem(device_type="cuda", qk_head_dim=8, v_head_dim=8))
    assert "below 16" in why
    assert flex.can_run(_problem(device_type="cuda", needs_grad=True, soft_routing=True)) == []
    assert "float64" in flex.can_run(_problem(device_type="cuda", dtype=torch.float64))[0]


def test_forcing_flex_for_cpu_training_names_the_reason():
    q, k, v, index = _inputs(1, (2, 2), (4, 4), (4, 4), 2, 1, 16)
    q.requires_grad_(True)
    with pytest.raises(ops.BackendUnavailable, match="no CPU backward"):
        ops.routed_attention(q, k, v, index, n_win=(2, 2), num_heads=1, scale=0.25,
                             backend="flex")
    assert "flex" not in ops.available_backends(_problem(needs_grad=True))


# ---------------------------------------------------------------- CPU forward, compiled


@needs_cpu_flex
@pytest.mark.parametrize(
    "b,n_win,q_region_size,kv_region_size,topk,heads,head_dim,key_valid",
    [
        (2, (3, 3), (3, 3), (3, 3), 3, 2, 16, None),  # padded 9-token regions
        (2, (7, 7), (2, 2), (1, 2), 16, 2, 16, (7, 13)),  # packed, downsampled, masked keys
    ],
)
def test_cpu_forward_matches_reference(b, n_win, q_region_size, kv_region_size, topk, heads,
                                       head_dim, key_valid):
    q, k, v, index = _inputs(b, n_win, q_region_size, kv_region_size, topk, heads, head_dim)
    kw = dict(n_win=n_win, num_heads=heads, scale=0.3, key_valid=key_valid)
    want = ops.routed_attention(q, k, v, index, backend="reference", **kw)
    with torch.no_grad():
        got = ops.routed_attention(q, k, v, index, backend="flex", **kw)
    assert got.shape == want.shape and got.is_contiguous()
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    if key_valid is None:
        dense = dense_routed_attention(q.double(), k.double(), v.double(), index, n_win,
                                       heads, 0.3)
        torch.testing.assert_close(got.double(), dense, rtol=1e-5, atol=1e-5)


@pytest.mark.slow
@needs_cpu_flex
def test_layer_inference_on_flex_matches_reference_and_compiles():
    layer = BiLevelRoutingAttention(64, num_heads=2, n_win=4, topk=4, side_dwconv=3,
                                    backend="flex").eval()
    x = torch.randn(2, 16, 16, 64)  # 4x4 regions of 16 tokens: whole blocks, no mask
    with torch.no_grad():
        got = layer(x)
        compiled = torch.compile(layer)(x)
        layer.backend = "reference"
        want = layer(x)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(compiled, want, rtol=1e-4, atol=1e-4)


@needs_cpu_flex
def test_bra2d_with_padding_on_flex_matches_reference():
    layer = BRA2d(32, num_heads=2, n_win=3, topk=3, mask_padded_keys=True, backend="flex")
    x = torch.randn(1, 32, 11, 10)  # regions of 3x3 tokens on a padded 12x12 grid
    with torch.no_grad():
        got = layer(x)
        layer.backend = "reference"
        want = layer(x)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def _drop_out_of_range(index, r):
    """The same routing with ids outside [0, R) replaced by the row's first id: routed once
    more, which a mask (the oracle's) does not count, i.e. those ids route nothing."""
    inside = (index >= 0) & (index < r)
    return torch.where(inside, index, index[..., :1])


def _poisoned(b, n_win, topk):
    index = _routing(b, n_win[0] * n_win[1], topk)
    index[1, 0, 1] = n_win[0] * n_win[1]
    index[1, 2, 1] = -1
    return index


def test_ids_out_of_range_route_nothing_on_the_eager_path():
    n_win, heads = (2, 2), 2
    q, k, v, _ = _inputs(2, n_win, (3, 2), (3, 2), 2, heads, 8)
    index = _poisoned(2, n_win, 3)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore", UserWarning)  # "flex_attention called without compile"
        got = flex.routed_attention(q, k, v, index, None, n_win=n_win, num_heads=heads,
                                    scale=0.3, compiled=False)
    want = dense_routed_attention(q, k, v, _drop_out_of_range(index, 4), n_win, heads, 0.3)
    assert torch.isfinite(got).all()
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


@needs_cpu_flex
def test_ids_out_of_range_route_nothing_compiled():
    """Same shape as the first CPU case above: no new compilation."""
    n_win, heads = (3, 3), 2
    q, k, v, _ = _inputs(2, n_win, (3, 3), (3, 3), 3, heads, 16)
    index = _poisoned(2, n_win, 3)
    with torch.no_grad():
        got = ops.routed_attention(q, k, v, index, n_win=n_win, num_heads=heads, scale=0.3,
                                   backend="flex", validate=False)
    want = dense_routed_attention(q, k, v, _drop_out_of_range(index, 9), n_win, heads, 0.3)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_repeated_ids_are_refused_with_the_reason():
    q, k, v, index = _inputs(1, (2, 2), (2, 2), (2, 2), 2, 1, 16)
    index[0, 1, 1] = index[0, 1, 0]
    with torch.no_grad(), pytest.raises(ops.BackendUnavailable, match="twice in one row"):
        ops.routed_attention(q, k, v, index, n_win=(2, 2), num_heads=1, scale=0.25,
                             backend="flex")
    assert "flex" not in ops.available_backends(_problem(repeated_index=True))


def test_importing_biformer_does_not_import_flex_attention():
    """FlexAttention (and its import cost) is loaded on first use; can_run does not need it."""
    code = ("import sys, torch, biformer; from biformer import ops; "
            "from biformer.ops.backends import flex; "
            "p = ops.checks.describe_problem(*[torch.ones(1, 2, 2, 16)] * 3, "
            "torch.zeros(1, 1, 1, dtype=torch.long), None, (1, 1), 1); "
            "print(flex.can_run(p) == [] or flex.can_run(p), "
            "'torch.nn.attention.flex_attention' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split()[-1] == "False", out.stdout


# ---------------------------------------------------------------- soft routing formulation


@pytest.mark.parametrize(
    "n_win,q_region_size,kv_region_size,topk,key_valid",
    [((3, 3), (3, 3), (3, 3), 3, None), ((4, 4), (2, 2), (2, 2), 5, (7, 7)),
     ((2, 2), (4, 4), (2, 4), 2, None), ((3, 3), (2, 2), (2, 2), 4, None)],  # padded regions
)
def test_soft_routing_formulation_is_exact(n_win, q_region_size, kv_region_size, topk,
                                           key_valid):
    """Two log-sum-exps give the value scaling exactly (checked on the eager, unfused path)."""
    q, k, v, index = _inputs(2, n_win, q_region_size, kv_region_size, topk, 2, 8)
    weight = torch.softmax(torch.randn(2, n_win[0] * n_win[1], topk), -1)
    kw = dict(n_win=n_win, num_heads=2, scale=0.4, key_valid=key_valid)
    want = ops.routed_attention(q, k, v, index, weight=weight, backend="reference", **kw)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore", UserWarning)  # "flex_attention called without compile"
        got = flex.routed_attention(q, k, v, index, weight, compiled=False, **kw)
        hard = flex.routed_attention(q, k, v, index, None, compiled=False, **kw)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert torch.isfinite(got).all()
    assert not torch.allclose(hard, want, atol=1e-3)  # the weights do change the result


# ---------------------------------------------------------------- CUDA: forward and backward

CUDA_CASES = [
    # b, n_win, q_region_size, kv_region_size, topk, heads, head_dim, soft, key_valid
    (2, (7, 7), (8, 8), (8, 8), 1, 2, 32, False, None),  # BiFormer-S stage 1
    (2, (7, 7), (4, 4), (4, 4), 4, 4, 32, False, None),  # stage 2
    (2, (7, 7), (2, 2), (2, 2), 16, 8, 32, False, None),  # stage 3 (packed)
    (1, (3, 3), (5, 6), (5, 6), 3, 2, 16, False, (13, 16)),  # padded, masked keys
    (2, (4, 4), (4, 4), (2, 2), 3, 2, 24, True, None),  # soft routing, downsampled keys
    (1, (7, 7), (2, 2), (2, 2), 8, 2, 32, True, None),
]


@needs_cuda
@pytest.mark.parametrize("case", CUDA_CASES)
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 2e-4), (torch.bfloat16, 3e-2)])
def test_cuda_forward_backward_match_reference(case, dtype, tol):
    b, n_win, q_region_size, kv_region_size, topk, heads, head_dim, soft, key_valid = case
    q, k, v, index = _inputs(b, n_win, q_region_size, kv_region_size, topk, heads, head_dim,
                             "cuda")
    weight = torch.softmax(torch.randn(b, n_win[0] * n_win[1], topk, device="cuda"), -1)
    weight = weight if soft else None
    leaves = [t.requires_grad_(True) for t in (q, k, v, weight) if t is not None]
    kw = dict(n_win=n_win, num_heads=heads, scale=head_dim**-0.5, key_valid=key_valid)
    want = ops.routed_attention(q, k, v, index, weight=weight, backend="reference", **kw)
    low = [t.detach().to(dtype).requires_grad_(True) for t in (q, k, v)]
    w_low = weight.detach().clone().requires_grad_(True) if soft else None
    got = ops.routed_attention(*low, index, weight=w_low, backend="flex", **kw)
    assert got.dtype == dtype
    err = (got.float() - want).norm() / want.norm()
    assert err < tol, f"relative error {err:.2e}"
    g = torch.randn_like(want)
    want_grads = torch.autograd.grad(want, leaves, g)
    got_grads = torch.autograd.grad(got, low + ([w_low] if soft else []), g.to(dtype))
    for name, a, w in zip("qkvw"[: len(got_grads)], got_grads, want_grads, strict=True):
        rel = (a.float() - w).norm() / w.norm()
        assert rel < 5 * tol, f"grad {name}: relative error {rel:.2e}"


@needs_cuda
def test_cuda_compiled_layer_trains_on_flex():
    layer = BiLevelRoutingAttention(64, num_heads=2, n_win=7, topk=4, backend="flex").cuda()
    x = torch.randn(2, 28, 28, 64, device="cuda", requires_grad=True)
    out = torch.compile(layer)(x)
    (gx,) = torch.autograd.grad(out.square().sum(), x)
    layer.backend = "reference"
    want = layer(x)
    (wx,) = torch.autograd.grad(want.square().sum(), x)
    torch.testing.assert_close(out, want, rtol=1e-3, atol=1e-3)
    torch.testing.assert_close(gx, wx, rtol=1e-3, atol=1e-3)
    problem = _problem(device_type="cuda", needs_grad=True)
    assert ops.choose_backend(problem) in ("triton", "flex")
