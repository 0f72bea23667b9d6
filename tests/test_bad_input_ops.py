"""Bad input to the functional API (``biformer.ops``): one row per mistake, one clear line each.

Every row is an input and the stable phrase its one-line message must contain; the call is
made on otherwise valid arguments. Edge cases that are not mistakes (an empty batch) give an
empty result, the same on every backend.
"""

from __future__ import annotations

import pytest
import torch

from biformer import ops
from biformer.ops import dispatch

G = torch.Generator().manual_seed(0)
X = torch.randn(2, 4, 4, 8, generator=G)  # B=2, 4x4 map, 8 channels: n_win=2 -> 4 regions of 2x2
X5 = torch.randn(2, 4, 4, 8, 1, generator=G)
IDX = torch.tensor([[0, 1], [1, 2], [2, 3], [3, 0]]).expand(2, 4, 2).contiguous()
W = torch.softmax(torch.randn(2, 4, 2, generator=G), -1)
REG = torch.randn(2, 4, 8, generator=G)  # region means [B, R, C]
META = dict(device="meta")


def ra(q=X, k=X, v=X, index=IDX, **kw):
    """``routed_attention`` on valid arguments, with ``kw`` changed."""
    args = dict(n_win=2, num_heads=2, scale=0.5) | kw
    return ops.routed_attention(q, k, v, index, **args)


def raw(q=X, k=X, v=X, index=IDX, **kw):
    return ops.routed_attention_with_weights(q, k, v, index, **(dict(n_win=2, num_heads=2,
                                                                      scale=0.5) | kw))


def rm(x=X, **kw):
    return ops.region_mean(x, **(dict(n_win=2) | kw))


def tr(q=REG, k=REG, **kw):
    return ops.topk_routing(q, k, **(dict(topk=2, scale=0.5) | kw))


def bra(q=X, k=X, v=X, **kw):
    return ops.bi_level_routing_attention(q, k, v, **(dict(n_win=2, topk=2, num_heads=2,
                                                             scale=0.5) | kw))


def _poke(index, where, value):
    index = index.clone()
    index[where] = value
    return index


V, T, U = ValueError, TypeError, ops.BackendUnavailable
ROUTED_ATTENTION = [
    ("query-not-tensor", lambda: ra(q=X.numpy()), T, "query must be a torch.Tensor"),
    ("query-3d", lambda: ra(q=X[0]), V, "query must be a 4-D tensor NHWC"),
    ("query-3d-hint", lambda: ra(q=X[0]), V, "add a batch dimension with .unsqueeze(0)"),
    ("query-5d", lambda: ra(q=X5), V, "query must be a 4-D tensor"),
    ("query-int", lambda: ra(q=X.long()), T, "query must be a floating-point tensor"),
    ("key-dtype", lambda: ra(k=X.double()), T, "query and key must share one dtype"),
    ("value-dtype", lambda: ra(v=X.half()), T, "query and value must share one dtype"),
    ("key-device", lambda: ra(k=torch.empty(2, 4, 4, 8, **META)), V, "must be on one device"),
    ("key-batch-broadcast", lambda: ra(k=X[:1]), V, "batch sizes differ: query has 2, key 1"),
    ("value-batch", lambda: ra(v=X[:1]), V, "batch sizes differ"),
    ("key-channels", lambda: ra(k=X[..., :6]), V, "query and key need the same channel count"),
    ("zero-channels", lambda: ra(q=X[..., :0], k=X[..., :0]), V, "need at least one channel"),
    ("zero-value-channels", lambda: ra(v=X[..., :0]), V, "need at least one channel"),
    ("value-size", lambda: ra(v=X[:, :2]), V, "key and value need the same spatial size"),
    ("heads-not-divisor", lambda: ra(num_heads=3), V, "num_heads=3 must divide"),
    ("heads-zero", lambda: ra(num_heads=0), V, "num_heads must be >= 1"),
    ("heads-bool", lambda: ra(num_heads=True), T, "num_heads must be an int"),
    ("heads-float", lambda: ra(num_heads=2.0), T, "num_heads must be an int"),
    ("empty-map", lambda: ra(q=X[:, :0]), V, "query has an empty 0x4 map"),
    ("empty-key-map", lambda: ra(k=X[:, :, :0], v=X[:, :, :0]), V, "key has an empty 4x0 map"),
    ("not-multiple", lambda: ra(n_win=3), V, "query size (4, 4) is not a multiple of n_win=(3, 3)"),
    ("key-not-multiple", lambda: ra(k=X[:, :3], v=X[:, :3]), V, "key size (3, 4) is not a multiple"),
    ("n_win-zero", lambda: ra(n_win=0), V, "n_win must be >= 1"),
    ("n_win-float", lambda: ra(n_win=2.0), T, "n_win must be an int or a pair of ints"),
    ("n_win-bool", lambda: ra(n_win=True), T, "n_win must be an int or a pair of ints"),
    ("n_win-triple", lambda: ra(n_win=(2, 2, 2)), T, "n_win must be an int or a pair of ints"),
    ("n_win-float-pair", lambda: ra(n_win=(2.0, 2)), T, "n_win must be an int or a pair"),
    ("n_win-str", lambda: ra(n_win="2"), T, "n_win must be an int or a pair of ints"),
    ("n_win-missing", lambda: ra(n_win=None), T, "n_win= (regions per side"),
    ("n_win-and-regions", lambda: ra(regions=2), T, "pass n_win= only"),
    ("index-float", lambda: ra(index=IDX.float()), T, "index must be an int64 (or int32) tensor"),
    ("index-int16", lambda: ra(index=IDX.short()), T, "index must be an int64 (or int32) tensor"),
    ("index-list", lambda: ra(index=IDX.tolist()), T, "index must be a torch.Tensor"),
    ("index-device", lambda: ra(index=torch.empty(2, 4, 2, dtype=torch.long, **META)), V,
     "index is on meta but query on cpu"),
    ("index-batch-broadcast", lambda: ra(index=IDX[:1]), V,
     "index must be [batch, num_regions, topk] = [2, 4, topk]"),
    ("index-2d", lambda: ra(index=IDX[0]), V, "index must be [batch, num_regions, topk]"),
    ("index-regions", lambda: ra(index=IDX[:, :3]), V, "index must be [batch, num_regions, topk]"),
    ("topk-zero", lambda: ra(index=IDX[..., :0]), V, "index has topk=0 routed regions per row"),
    ("topk-too-big", lambda: ra(index=torch.zeros(2, 4, 5, dtype=torch.long)), V,
     "it must be between 1 and num_regions=4"),
    ("id-equal-to-regions", lambda: ra(index=_poke(IDX, (1, 2, 1), 4)), V,
     "index[1, 2, 1]=4 is not a region id"),
    ("id-negative", lambda: ra(index=_poke(IDX, (1, 0, 0), -1)), V,
     "index[1, 0, 0]=-1 is not a region id: ids must lie in [0, num_regions=4)"),
    ("id-out-of-range-chunked", lambda: ra(index=_poke(IDX, (1, 0, 0), 4), backend="chunked"), V,
     "is not a region id"),
    ("id-out-of-range-reference", lambda: ra(index=_poke(IDX, (1, 0, 0), -1),
                                             backend="reference"), V, "is not a region id"),
    ("weight-shape", lambda: ra(weight=W[:1]), V, "weight must have the shape of index"),
    ("weight-int", lambda: ra(weight=IDX), T, "weight must be a floating-point tensor"),
    ("weight-device", lambda: ra(weight=torch.empty(2, 4, 2, **META)), V, "weight is on meta"),
    ("scale-str", lambda: ra(scale="0.5"), T, "scale must be a real number"),
    ("scale-tensor", lambda: ra(scale=torch.tensor(0.5)), T, "scale must be a real number"),
    ("scale-nan", lambda: ra(scale=float("nan")), V, "scale must be finite"),
    ("scale-inf", lambda: ra(scale=float("inf")), V, "scale must be finite"),
    ("key_valid-zero", lambda: ra(key_valid=(0, 4)), V, "key_valid=(0, 4) is out of range"),
    ("key_valid-too-big", lambda: ra(key_valid=(5, 4)), V, "between (1, 1) and (4, 4)"),
    ("key_valid-empty-region", lambda: ra(key_valid=(2, 4)), V,
     "leaves regions of the 4x4 map (regions of 2x2 tokens) without a real token"),
    ("key_valid-float", lambda: ra(key_valid=(3.5, 4)), T, "key_valid must be a pair of ints"),
    ("key_valid-int", lambda: ra(key_valid=4), T, "key_valid must be a pair of ints"),
    ("key_valid-bool", lambda: ra(key_valid=(True, 4)), T, "key_valid must be a pair of ints"),
    ("backend-unknown", lambda: ra(backend="cuda"), V, "unknown backend 'cuda'"),
    ("backend-flex-float64", lambda: ra(q=X.double(), k=X.double(), v=X.double(),
                                        backend="flex"), U, "dtype torch.float64 is not supported"),
    ("backend-flex-repeated-ids", lambda: _no_grad(ra, index=_poke(IDX, (0, 0, 1), 0),
                                                   backend="flex"), U,
     "names a key region twice in one row"),
    ("backend-flex-training", lambda: ra(q=X.clone().requires_grad_(), backend="flex"), U,
     "no CPU backward"),
]
WITH_WEIGHTS = [
    ("weights-id-out-of-range", lambda: raw(index=_poke(IDX, (1, 3, 1), 7)), V,
     "index[1, 3, 1]=7 is not a region id"),
    ("weights-batch-broadcast", lambda: raw(index=IDX[:1]), V, "index must be [batch"),
    ("weights-key_valid", lambda: raw(key_valid=(4, 0)), V, "key_valid=(4, 0) is out of range"),
    ("weights-n_win-float", lambda: raw(n_win=(2, 2.5)), T, "n_win must be an int or a pair"),
]
REGION_MEAN = [
    ("mean-not-tensor", lambda: rm(x=[1.0]), T, "x must be a torch.Tensor"),
    ("mean-3d", lambda: rm(x=X[0]), V, "x must be a 4-D tensor NHWC"),
    ("mean-int", lambda: rm(x=X.long()), T, "x must be a floating-point tensor"),
    ("mean-empty-map", lambda: rm(x=X[:, :, :0]), V, "x has an empty 4x0 map"),
    ("mean-not-multiple", lambda: rm(n_win=3), V, "x size (4, 4) is not a multiple of n_win=(3, 3)"),
    ("mean-n_win-float", lambda: rm(n_win=2.0), T, "n_win must be an int or a pair of ints"),
    ("mean-n_win-bool", lambda: rm(n_win=(True, 2)), T, "n_win must be an int or a pair"),
    ("mean-n_win-negative", lambda: rm(n_win=(2, -1)), V, "n_win must be >= 1"),
    ("mean-valid-zero", lambda: rm(valid=(0, 4)), V, "valid=(0, 4) is out of range"),
    ("mean-valid-too-big", lambda: rm(valid=(4, 9)), V, "valid=(4, 9) is out of range"),
    ("mean-valid-empty-region", lambda: rm(valid=(4, 1)), V, "without a real token"),
    ("mean-valid-float", lambda: rm(valid=(3.0, 4)), T, "valid must be a pair of ints"),
]
TOPK_ROUTING = [
    ("routing-2d", lambda: tr(q=REG[0]), V, "query_regions must be a 3-D tensor"),
    ("routing-int", lambda: tr(k=REG.long()), T, "key_regions must be a floating-point tensor"),
    ("routing-dtype", lambda: tr(k=REG.double()), T,
     "query_regions and key_regions must share one dtype"),
    ("routing-device", lambda: tr(k=torch.empty(2, 4, 8, **META)), V, "must be on one device"),
    ("routing-batch-broadcast", lambda: tr(q=REG[:1]), V,
     "batch sizes differ: query_regions has 1, key_regions 2"),
    ("routing-channels", lambda: tr(k=REG[..., :4]), V, "need the same channel count"),
    ("routing-zero-channels", lambda: tr(q=REG[..., :0], k=REG[..., :0]), V,
     "need the same channel count (>= 1)"),
    ("routing-topk-zero", lambda: tr(topk=0), V, "topk=0 must be >= 1"),
    ("routing-topk-negative", lambda: tr(topk=-2), V, "topk=-2 must be >= 1"),
    ("routing-topk-too-big", lambda: tr(topk=5), V, "topk=5 exceeds num_regions=4"),
    ("routing-no-regions", lambda: tr(k=REG[:, :0]), V, "topk=2 exceeds num_regions=0"),
    ("routing-topk-bool", lambda: tr(topk=True), T, "topk must be an int"),
    ("routing-topk-float", lambda: tr(topk=2.0), T, "topk must be an int"),
    ("routing-scale-nan", lambda: tr(scale=float("nan")), V, "scale must be finite"),
    ("routing-scale-str", lambda: tr(scale="x"), T, "scale must be a real number"),
]
BI_LEVEL = [
    ("bra-topk-too-big", lambda: bra(topk=5), V, "topk=5 exceeds num_regions=4"),
    ("bra-topk-zero", lambda: bra(topk=0), V, "topk=0 must be >= 1"),
    ("bra-n_win-float", lambda: bra(n_win=2.0), T, "n_win must be an int or a pair of ints"),
    ("bra-not-multiple", lambda: bra(n_win=(3, 2)), V, "is not a multiple of n_win=(3, 2)"),
    ("bra-batch-broadcast", lambda: bra(k=X[:1]), V, "batch sizes differ"),
    ("bra-heads", lambda: bra(num_heads=3), V, "num_heads=3 must divide"),
    ("bra-scale-inf", lambda: bra(scale=float("inf")), V, "scale must be finite"),
    ("bra-dtype", lambda: bra(v=X.double()), T, "query and value must share one dtype"),
]


def _no_grad(fn, **kw):
    with torch.no_grad():
        return fn(**kw)


ROWS = ROUTED_ATTENTION + WITH_WEIGHTS + REGION_MEAN + TOPK_ROUTING + BI_LEVEL


def raises_one_line(call, exc, phrase: str) -> None:
    """``call()`` raises ``exc`` with a one-line message that contains ``phrase``."""
    with pytest.raises(exc) as caught:
        call()
    message = str(caught.value)
    assert phrase in message, message
    assert "\n" not in message


@pytest.mark.parametrize("call,exc,phrase", [pytest.param(*r[1:], id=r[0]) for r in ROWS])
def test_bad_input_gives_one_clear_line(call, exc, phrase):
    raises_one_line(call, exc, phrase)


ENV_ROWS = [
    ("BIFORMER_CHUNK_MB", "inf", "chunked", "BIFORMER_CHUNK_MB must be a finite number of MiB > 0"),
    ("BIFORMER_CHUNK_MB", "nan", "chunked", "got 'nan'"),
    ("BIFORMER_CHUNK_MB", "-1", "chunked", "got '-1'"),
    ("BIFORMER_CHUNK_MB", "0", "chunked", "got '0'"),
    ("BIFORMER_CHUNK_MB", "lots", "chunked", "got 'lots'"),
    ("BIFORMER_GATHER_LIMIT_MB", "inf", None, "BIFORMER_GATHER_LIMIT_MB must be a finite number"),
    ("BIFORMER_GATHER_LIMIT_MB", "-0.5", None, "of MiB >= 0, got '-0.5'"),
]


@pytest.mark.parametrize("variable,value,backend,phrase", ENV_ROWS,
                         ids=[f"{r[0]}={r[1]}" for r in ENV_ROWS])
def test_bad_environment_gives_one_clear_line(monkeypatch, variable, value, backend, phrase):
    monkeypatch.setenv(variable, value)
    raises_one_line(lambda: ra(backend=backend), ValueError, phrase)


def test_bad_default_backend_names_the_variable():
    saved = dispatch._default[0]
    dispatch._default[0] = "flash"  # as if BIFORMER_BACKEND=flash
    try:
        with pytest.raises(ValueError, match="unknown BIFORMER_BACKEND value 'flash'"):
            ra()
    finally:
        dispatch._default[0] = saved


def test_forced_backend_refusal_is_the_same_for_an_empty_batch():
    """An empty batch does not hide a refusal: forcing flex on float64 fails either way."""
    x = X.double()
    for q in (x, x[:0]):
        with pytest.raises(ops.BackendUnavailable, match="float64"):
            ra(q=q, k=q, v=q, index=IDX[: q.shape[0]], backend="flex")


@pytest.mark.parametrize("backend", [None, "reference", "chunked", "flex"])
def test_empty_batch_gives_empty_results_on_every_backend(backend):
    x, index = X[:0], IDX[:0]
    with torch.no_grad():
        out = ra(q=x, k=x[:, :2], v=x[:, :2, :, :6], index=index, backend=backend)
    assert out.shape == (0, 4, 4, 6)
    out, attn = raw(q=x, k=x, v=x, index=index)
    assert out.shape == (0, 4, 4, 8) and attn.shape == (0, 2, 4, 8)
    assert rm(x=x).shape == (0, 4, 8)
    weights, idx = tr(q=REG[:0], k=REG[:0])
    assert weights.shape == idx.shape == (0, 4, 2)
    out, weights, idx = bra(q=x, k=x, v=x, backend=backend)
    assert out.shape == (0, 4, 4, 8) and idx.shape == (0, 4, 2)


def test_valid_arguments_of_every_accepted_form_run():
    """The forms the checks accept really run: pairs as lists, int32 ids, key_valid as a
    list, integer scales; and give the reference's numbers."""
    want = ra(backend="reference")
    assert torch.equal(ra(n_win=[2, 2], backend="reference"), want)
    assert torch.equal(ra(index=IDX.int(), backend="reference"), want)
    assert torch.equal(ra(key_valid=[3, 4], backend="reference"), ra(key_valid=(3, 4),
                                                                      backend="reference"))
    torch.testing.assert_close(ra(scale=1, backend="chunked"), ra(scale=1.0, backend="reference"))
