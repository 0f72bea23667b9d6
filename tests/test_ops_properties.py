"""Property-based tests of the routed-attention operator (hypothesis).

Random region grids, region sizes (key regions no larger than query regions), batch, heads,
widths, dtypes (fp64/fp32/bf16/fp16), soft routing, padded keys (``key_valid``) and routing
patterns (distinct ids, repeated ids, every query region routing to the same regions, a region
chosen by nobody): every CPU backend equals the reference within the dtype's tolerance, or
refuses with the reasons ``ops.backend_reasons`` gives.

Runs derandomized by default (the same examples on every run, as CI needs); set
``BIFORMER_HYPOTHESIS=random`` to explore new examples.
"""

from __future__ import annotations

import os
import warnings
from contextlib import contextmanager
from dataclasses import dataclass

import pytest
import torch
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from biformer import ops
from biformer.ops.backends import flex
from biformer.ops.checks import check_routed_attention_args

from .oracles import dense_routed_attention
from .test_flex_backend import check_block_mask

settings.register_profile("ci", derandomize=True, deadline=None, print_blob=True,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("random", derandomize=False, deadline=None, print_blob=True,
                          suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("BIFORMER_HYPOTHESIS", "ci"))

DTYPES = [torch.float64, torch.float32, torch.bfloat16, torch.float16]
PATTERNS = ["distinct", "repeated", "all_same", "nobody"]
TIGHT = {torch.float64: 1e-10, torch.float32: 2e-5}  # backend vs reference, same dtype
FLOOR = {torch.bfloat16: 2e-2, torch.float16: 3e-3}  # 16-bit: error vs fp64, see _assert_agree


@dataclass
class Case:
    q: torch.Tensor
    k: torch.Tensor
    v: torch.Tensor
    index: torch.Tensor
    weight: torch.Tensor | None
    n_win: tuple[int, int]
    heads: int
    scale: float
    key_valid: tuple[int, int] | None
    pattern: str

    def kwargs(self) -> dict:
        return dict(n_win=self.n_win, num_heads=self.heads, scale=self.scale,
                    weight=self.weight, key_valid=self.key_valid)


def _index(pattern: str, b: int, r: int, topk: int, g: torch.Generator) -> torch.Tensor:
    """``[b, r, topk]`` routing ids following ``pattern``."""
    if pattern == "repeated" and topk > 1:  # ids drawn with replacement, one repeat forced
        idx = torch.randint(r, (b, r, topk), generator=g)
        idx[..., 1] = idx[..., 0]
        return idx
    if pattern == "all_same":  # everybody routes to the same regions; the others to nobody
        row = torch.randperm(r, generator=g)[:topk]
        return row.expand(b, r, topk).clone()
    pool = torch.arange(r)
    if pattern == "nobody" and topk < r:  # one region that no query region routes to
        pool = pool[pool != int(torch.randint(r, (), generator=g))]
    rows = [pool[torch.randperm(len(pool), generator=g)[:topk]] for _ in range(b * r)]
    return torch.stack(rows).view(b, r, topk)


@st.composite
def cases(draw, dtypes=DTYPES, soft=(False, True), padded=(False, True), side=3) -> Case:
    """A random, valid routed-attention call (query regions of up to ``side x side`` tokens)."""
    rh, rw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    qh, qw = draw(st.integers(1, side)), draw(st.integers(1, side))
    kh, kw = draw(st.integers(1, qh)), draw(st.integers(1, qw))  # KV regions <= query regions
    b, heads = draw(st.integers(1, 2)), draw(st.integers(1, 2))
    dqk, dv = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    r = rh * rw
    topk = draw(st.integers(1, r))
    dtype = draw(st.sampled_from(dtypes))
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    q = torch.randn(b, rh * qh, rw * qw, heads * dqk, generator=g, dtype=torch.float64)
    k = torch.randn(b, rh * kh, rw * kw, heads * dqk, generator=g, dtype=torch.float64)
    v = torch.randn(b, rh * kh, rw * kw, heads * dv, generator=g, dtype=torch.float64)
    pattern = draw(st.sampled_from(PATTERNS))
    index = _index(pattern, b, r, topk, g)
    weight = None
    if draw(st.sampled_from(soft)):
        weight = torch.softmax(torch.randn(b, r, topk, generator=g, dtype=torch.float64), -1)
    key_valid = None
    if draw(st.sampled_from(padded)):  # keep >= 1 real key in every region
        key_valid = (draw(st.integers(rh * kh - kh + 1, rh * kh)),
                     draw(st.integers(rw * kw - kw + 1, rw * kw)))
    cast = [t.to(dtype) if t is not None else None for t in (q, k, v, weight)]
    return Case(*cast[:3], index, cast[3], (rh, rw), heads, draw(st.floats(0.1, 1.0)),
                key_valid, pattern)


@contextmanager
def _chunk_mb(value: str | None):
    """``BIFORMER_CHUNK_MB`` set to ``value`` inside the block (unset for None)."""
    saved = os.environ.get("BIFORMER_CHUNK_MB")
    if value is None:
        os.environ.pop("BIFORMER_CHUNK_MB", None)
    else:
        os.environ["BIFORMER_CHUNK_MB"] = value
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop("BIFORMER_CHUNK_MB", None)
        else:
            os.environ["BIFORMER_CHUNK_MB"] = saved


def _reference64(case: Case) -> torch.Tensor:
    kw = case.kwargs()
    kw["weight"] = None if case.weight is None else case.weight.double()
    return ops.routed_attention(case.q.double(), case.k.double(), case.v.double(), case.index,
                                backend="reference", **kw)


def _assert_agree(got: torch.Tensor, want: torch.Tensor, case: Case) -> None:
    """``got`` (a backend) agrees with ``want`` (the reference, same dtype).

    fp64/fp32: within a tight tolerance of each other. 16-bit: rounding dominates, so judged
    the flash-attention way: the backend's error against the fp64 reference is at most twice
    the reference's own error in that dtype, plus a small floor.
    """
    assert got.shape == want.shape and got.dtype == want.dtype
    if got.dtype in TIGHT:
        tol = TIGHT[got.dtype]
        torch.testing.assert_close(got, want, rtol=tol, atol=tol)
        return
    exact = _reference64(case)
    err = (got.double() - exact).abs().max().item()
    ref_err = (want.double() - exact).abs().max().item()
    assert err <= 2 * ref_err + FLOOR[got.dtype] * (1 + exact.abs().max().item()), (err, ref_err)


def _leaves(case: Case) -> list[torch.Tensor]:
    return [t for t in (case.q, case.k, case.v, case.weight) if t is not None]


@settings(max_examples=60, deadline=None)
@given(case=cases(), tiles=st.sampled_from([None, "0.000001", "0.001"]), grad=st.booleans())
def test_chunked_equals_reference(case, tiles, grad):
    """Chunked (default tiles, one token per tile, a few regions per tile) == reference,
    outputs and (fp32/fp64) gradients."""
    grad = grad and case.q.dtype in TIGHT
    event(f"{case.q.dtype}, {case.pattern}, soft={case.weight is not None}")
    for t in _leaves(case):
        t.requires_grad_(grad)
    want = ops.routed_attention(case.q, case.k, case.v, case.index, backend="reference",
                                **case.kwargs())
    with _chunk_mb(tiles):
        got = ops.routed_attention(case.q, case.k, case.v, case.index, backend="chunked",
                                   **case.kwargs())
    assert torch.isfinite(got).all()
    _assert_agree(got, want, case)
    if grad:
        g = torch.randn(want.shape, generator=torch.Generator().manual_seed(1), dtype=want.dtype)
        with _chunk_mb(tiles):
            got_g = torch.autograd.grad(got, _leaves(case), g)
        want_g = torch.autograd.grad(want, _leaves(case), g)
        tol = 10 * TIGHT[want.dtype]
        for a, w in zip(got_g, want_g, strict=True):
            torch.testing.assert_close(a, w, rtol=tol, atol=tol)


@settings(max_examples=30, deadline=None)
@given(case=cases(dtypes=[torch.float64], padded=(False,)))
def test_reference_equals_dense_oracle(case):
    """The reference itself against the brute-force oracle (distinct ids: the oracle's mask
    holds each routed region once, where the reference gathers a repeated id twice)."""
    if case.pattern == "repeated" and case.index.shape[-1] > 1:
        return
    want = dense_routed_attention(case.q, case.k, case.v, case.index, case.n_win, case.heads,
                                  case.scale, case.weight)
    got = ops.routed_attention(case.q, case.k, case.v, case.index, backend="reference",
                               **case.kwargs())
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)


def _flex_eager(case: Case) -> torch.Tensor:
    """The flex backend on FlexAttention's eager path (no compilation per shape)."""
    kw = case.kwargs()
    weight = kw.pop("weight")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "flex_attention called without compile"
        return flex.routed_attention(case.q, case.k, case.v, case.index, weight, compiled=False,
                                     **kw)


@settings(max_examples=12, deadline=None)
@given(case=cases())
def test_flex_equals_reference_or_refuses(case):
    """FlexAttention (CPU: forward, no grad) on its eager path == reference, or it refuses with
    the reasons ``backend_reasons`` lists (float64, soft routing on CPU, repeated ids)."""
    with torch.no_grad():
        problem = check_routed_attention_args(case.q, case.k, case.v, case.index, case.weight,
                                              case.n_win, case.heads, key_valid=case.key_valid)
        reasons = ops.backend_reasons("flex", problem)
        event("flex refuses" if reasons else "flex runs")
        if reasons:
            with pytest.raises(ops.BackendUnavailable) as caught:
                ops.routed_attention(case.q, case.k, case.v, case.index, backend="flex",
                                     **case.kwargs())
            assert all(reason in str(caught.value) for reason in reasons)
            return
        want = ops.routed_attention(case.q, case.k, case.v, case.index, backend="reference",
                                    **case.kwargs())
        _assert_agree(_flex_eager(case), want, case)


@settings(max_examples=80, deadline=None)
@given(case=cases(dtypes=[torch.float32], soft=(False,), side=6), poison=st.booleans())
def test_flex_block_mask_admits_exactly_the_routed_keys(case, poison):
    """The block lists and mask_mod (what the compiled kernel reads) hold exactly the routed,
    real keys, for any layout; ids out of range (poisoned rows) route nothing."""
    index = case.index.clone()
    if poison:
        r = case.n_win[0] * case.n_win[1]
        index[-1, 0, 0] = r
        index[-1, -1, -1] = -1
    kv_region = (case.k.shape[1] // case.n_win[0], case.k.shape[2] // case.n_win[1])
    q_region = (case.q.shape[1] // case.n_win[0], case.q.shape[2] // case.n_win[1])
    check_block_mask(index, case.n_win, q_region, kv_region, case.key_valid)


FIXED = dict(b=2, n_win=(3, 3), region=(3, 3), heads=2, head_dim=16)  # as test_flex_backend


@pytest.mark.slow
@pytest.mark.skipif(not flex._CPU_SUPPORTED, reason="compiled CPU FlexAttention needs AVX2")
@settings(max_examples=8, deadline=None)
@given(topk=st.integers(1, 9), pattern=st.sampled_from(["distinct", "all_same", "nobody"]),
       seed=st.integers(0, 2**31 - 1))
def test_compiled_flex_equals_reference(topk, pattern, seed):
    """The compiled kernel (one shape, so one compilation) on random routings."""
    g = torch.Generator().manual_seed(seed)
    b, (rh, rw), (sh, sw) = FIXED["b"], FIXED["n_win"], FIXED["region"]
    c = FIXED["heads"] * FIXED["head_dim"]
    q, k, v = (torch.randn(b, rh * sh, rw * sw, c, generator=g) for _ in range(3))
    index = _index(pattern, b, rh * rw, topk, g)
    kw = dict(n_win=(rh, rw), num_heads=FIXED["heads"], scale=0.3)
    with torch.no_grad():
        got = ops.routed_attention(q, k, v, index, backend="flex", **kw)
    want = ops.routed_attention(q, k, v, index, backend="reference", **kw)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
