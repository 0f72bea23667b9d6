"""Backend dispatch: the automatic choice, its overrides and their precedence, and refusals."""

from __future__ import annotations

import pytest
import torch

from biformer import ops
from biformer.ops import dispatch
from biformer.ops.checks import Problem


def _problem(**changes) -> Problem:
    """BiFormer-S stage 2 at 224x224, batch 8, CPU training."""
    base = dict(
        device_type="cpu", dtype=torch.float32, batch=8, regions=(7, 7), q_region=(4, 4),
        kv_region=(4, 4), topk=4, num_heads=4, qk_head_dim=32, v_head_dim=32,
        soft_routing=False, masked_keys=False, needs_grad=True,
    )
    base.update(changes)
    return Problem(**base)


TOY = dict(batch=1, regions=(2, 2), q_region=(2, 2), kv_region=(2, 2), topk=2, num_heads=1,
           qk_head_dim=8, v_head_dim=8)


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch):
    for name in ("BIFORMER_BACKEND", "BIFORMER_GATHER_LIMIT_MB"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("TRITON_INTERPRET", "0")


def test_auto_on_cpu_is_chunked_except_for_toy_problems():
    assert ops.choose_backend(_problem()) == "chunked"
    assert ops.choose_backend(_problem(batch=1, needs_grad=False)) == "chunked"
    toy = _problem(**TOY)
    assert toy.gathered_bytes() < dispatch.DEFAULT_GATHER_LIMIT_BYTES
    assert ops.choose_backend(toy) == "reference"


def test_gather_limit_environment_variable(monkeypatch):
    monkeypatch.setenv("BIFORMER_GATHER_LIMIT_MB", "100000")
    assert ops.choose_backend(_problem()) == "reference"
    monkeypatch.setenv("BIFORMER_GATHER_LIMIT_MB", "0")
    assert ops.choose_backend(_problem(**TOY)) == "chunked"
    monkeypatch.setenv("BIFORMER_GATHER_LIMIT_MB", "lots")
    with pytest.raises(ValueError, match="BIFORMER_GATHER_LIMIT_MB must be a number"):
        ops.choose_backend(_problem())


def test_precedence_argument_then_context_then_environment(monkeypatch):
    problem = _problem()
    monkeypatch.setenv("BIFORMER_BACKEND", "reference")
    assert ops.choose_backend(problem) == "reference"
    with ops.use_backend("chunked"):
        assert ops.choose_backend(problem) == "chunked"
        with ops.use_backend("reference"):
            assert ops.choose_backend(problem) == "reference"
        assert ops.choose_backend(problem) == "chunked"
        assert ops.choose_backend(problem, "reference") == "reference"
        with ops.use_backend("auto"):  # "auto" inside a context falls through to the environment
            assert ops.choose_backend(problem) == "reference"
    assert dispatch._override == []
    monkeypatch.setenv("BIFORMER_BACKEND", "")
    assert ops.choose_backend(problem) == "chunked"


def test_context_is_restored_when_the_body_raises():
    with pytest.raises(RuntimeError, match="boom"), ops.use_backend("reference"):
        raise RuntimeError("boom")
    assert dispatch._override == []


def test_unknown_names_are_rejected_with_the_choices(monkeypatch):
    with pytest.raises(ValueError, match=r"unknown backend 'fast'.*'chunked'"):
        ops.choose_backend(_problem(), "fast")
    with pytest.raises(ValueError, match="unknown backend 'cuda'"), ops.use_backend("cuda"):
        pass
    monkeypatch.setenv("BIFORMER_BACKEND", "flash")
    with pytest.raises(ValueError, match="unknown backend 'flash'"):
        ops.choose_backend(_problem())


def test_every_backend_explains_itself_on_cpu_training():
    problem = _problem()
    assert ops.backend_reasons("reference", problem) == []
    assert ops.backend_reasons("chunked", problem) == []
    (flex_why,) = ops.backend_reasons("flex", problem)
    assert "no CPU backward" in flex_why
    triton_why = ops.backend_reasons("triton", problem)
    assert triton_why and all(isinstance(r, str) and r for r in triton_why)
    assert ops.available_backends(problem) == ["chunked", "reference"]


def test_forced_backend_error_lists_reasons_and_the_way_out(monkeypatch):
    monkeypatch.setenv("BIFORMER_BACKEND", "flex")
    with pytest.raises(ops.BackendUnavailable, match="no CPU backward.*backend='auto'"):
        ops.choose_backend(_problem())


@pytest.mark.parametrize("expected,changes", [("chunked", {}), ("reference", TOY)])
def test_routed_attention_runs_the_chosen_backend(monkeypatch, expected, changes):
    """The operator calls the module the dispatcher names, and its result is the oracle's."""
    p = _problem(**changes)
    g = torch.Generator().manual_seed(0)
    h, w = p.regions[0] * p.q_region[0], p.regions[1] * p.q_region[1]
    c = p.num_heads * p.qk_head_dim
    q, k, v = (torch.randn(p.batch, h, w, c, generator=g, dtype=torch.float64) for _ in range(3))
    index = torch.stack([
        torch.randperm(p.num_regions, generator=g)[: p.topk] for _ in range(p.batch * p.num_regions)
    ]).view(p.batch, p.num_regions, p.topk)
    kw = dict(regions=p.regions, num_heads=p.num_heads, scale=c**-0.5)
    want = ops.routed_attention(q, k, v, index, backend="reference", **kw)
    calls = []
    module = dispatch.get_backend(expected)
    original = module.routed_attention
    monkeypatch.setattr(module, "routed_attention",
                        lambda *a, **k: calls.append(expected) or original(*a, **k))
    got = ops.routed_attention(q, k, v, index, **kw)
    assert calls == [expected]
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
