"""Backend dispatch: the automatic choice, its overrides and their precedence, and refusals."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from biformer import ops
from biformer.ops import dispatch
from biformer.ops.checks import Problem


def _problem(**changes) -> Problem:
    """BiFormer-S stage 2 at 224x224, batch 8, CPU training."""
    base = dict(
        device_type="cpu", dtype=torch.float32, batch=8, n_win=(7, 7), q_region_size=(4, 4),
        kv_region_size=(4, 4), topk=4, num_heads=4, qk_head_dim=32, v_head_dim=32,
        soft_routing=False, masked_keys=False, needs_grad=True,
    )
    base.update(changes)
    return Problem(**base)


TOY = dict(batch=1, n_win=(2, 2), q_region_size=(2, 2), kv_region_size=(2, 2), topk=2,
           num_heads=1, qk_head_dim=8, v_head_dim=8)


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
    with pytest.raises(ValueError, match="BIFORMER_GATHER_LIMIT_MB must be a finite number"):
        ops.choose_backend(_problem())


@pytest.fixture
def default_backend():
    """Restore the process default after a test that changes it."""
    saved = dispatch._default[0]
    yield
    dispatch._default[0] = saved


def test_precedence_argument_then_context_then_default(default_backend):
    problem = _problem()
    ops.set_default_backend("reference")
    assert ops.choose_backend(problem) == "reference"
    with ops.use_backend("chunked"):
        assert ops.choose_backend(problem) == "chunked"
        with ops.use_backend("reference"):
            assert ops.choose_backend(problem) == "reference"
        assert ops.choose_backend(problem) == "chunked"
        assert ops.choose_backend(problem, "reference") == "reference"
        with ops.use_backend("auto"):  # "auto" inside a block is the automatic choice
            assert ops.choose_backend(problem) == "chunked"
            assert ops.choose_backend(problem, "reference") == "reference"
    assert dispatch._context == []
    assert ops.get_default_backend() == "reference"
    ops.set_default_backend("auto")
    assert ops.choose_backend(problem) == "chunked"


def test_environment_sets_the_default_once_at_import():
    code = "import biformer.ops as o; print(o.get_default_backend())"
    env = dict(os.environ, BIFORMER_BACKEND="reference")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.stdout.strip() == "reference", out.stderr
    env["BIFORMER_BACKEND"] = "flash"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.returncode != 0
    assert "unknown BIFORMER_BACKEND value 'flash'" in out.stderr


def test_context_is_restored_when_the_body_raises():
    with pytest.raises(RuntimeError, match="boom"), ops.use_backend("reference"):
        raise RuntimeError("boom")
    assert dispatch._context == []


def test_unknown_names_are_rejected_with_the_choices(default_backend):
    with pytest.raises(ValueError, match=r"unknown backend 'fast'.*chunked"):
        ops.choose_backend(_problem(), "fast")
    with pytest.raises(ValueError, match="unknown backend 'cuda'"), ops.use_backend("cuda"):
        pass
    with pytest.raises(ValueError, match="unknown backend 'flash'"):
        ops.set_default_backend("flash")
    dispatch._default[0] = "flash"  # as if BIFORMER_BACKEND=flash
    with pytest.raises(ValueError, match="unknown BIFORMER_BACKEND value 'flash'"):
        ops.choose_backend(_problem())


def test_tracing_for_export_picks_the_reference():
    problem = _problem()
    seen = []

    def probe(x):
        seen.append(ops.choose_backend(problem))
        return x * 2

    torch.jit.trace(probe, torch.ones(2), check_trace=False)
    assert seen == ["reference"]
    assert ops.choose_backend(problem) == "chunked"
    with pytest.raises(ops.BackendUnavailable, match="traced for export"):
        torch.jit.trace(lambda x: x * ops.choose_backend(problem, "chunked").count("c"),
                        torch.ones(2), check_trace=False)


def test_every_backend_explains_itself_on_cpu_training():
    problem = _problem()
    assert ops.backend_reasons("reference", problem) == []
    assert ops.backend_reasons("chunked", problem) == []
    (flex_why,) = ops.backend_reasons("flex", problem)
    assert "no CPU backward" in flex_why
    triton_why = ops.backend_reasons("triton", problem)
    assert triton_why and all(isinstance(r, str) and r for r in triton_why)
    assert ops.available_backends(problem) == ["chunked", "reference"]


def test_forced_backend_error_lists_reasons_and_the_way_out(default_backend):
    ops.set_default_backend("flex")
    with pytest.raises(ops.BackendUnavailable, match=r"'flex' \(the default.*no CPU backward.*"
                       "backend='auto'"):
        ops.choose_backend(_problem())


@pytest.mark.parametrize("expected,changes", [("chunked", {}), ("reference", TOY)])
def test_routed_attention_runs_the_chosen_backend(monkeypatch, expected, changes):
    """The operator calls the module the dispatcher names, and its result is the oracle's."""
    p = _problem(**changes)
    g = torch.Generator().manual_seed(0)
    h, w = p.n_win[0] * p.q_region_size[0], p.n_win[1] * p.q_region_size[1]
    c = p.num_heads * p.qk_head_dim
    q, k, v = (torch.randn(p.batch, h, w, c, generator=g, dtype=torch.float64) for _ in range(3))
    index = torch.stack([
        torch.randperm(p.num_regions, generator=g)[: p.topk] for _ in range(p.batch * p.num_regions)
    ]).view(p.batch, p.num_regions, p.topk)
    kw = dict(n_win=p.n_win, num_heads=p.num_heads, scale=c**-0.5)
    want = ops.routed_attention(q, k, v, index, backend="reference", **kw)
    calls = []
    module = dispatch.get_backend(expected)
    original = module.routed_attention
    monkeypatch.setattr(module, "routed_attention",
                        lambda *a, **k: calls.append(expected) or original(*a, **k))
    got = ops.routed_attention(q, k, v, index, **kw)
    assert calls == [expected]
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)


def test_compiled_layers_follow_a_changed_choice(default_backend):
    """Dynamo guards on the rule's inputs: a new choice recompiles instead of running the old."""
    from torch._dynamo.utils import counters

    from biformer.layers import BiLevelRoutingAttention

    torch._dynamo.reset()
    layer = BiLevelRoutingAttention(32, num_heads=2, n_win=4, topk=2).eval()
    x = torch.randn(2, 16, 16, 32)
    compiled = torch.compile(layer, backend="eager", fullgraph=True)
    ops.set_default_backend("reference")
    with torch.no_grad():
        want = layer(x)
        graphs = []
        for change in (None, lambda: ops.set_default_backend("chunked"),
                       lambda: setattr(layer, "backend", "reference")):
            if change is not None:
                change()
            torch.testing.assert_close(compiled(x), want, rtol=1e-5, atol=1e-6)
            graphs.append(counters["stats"]["unique_graphs"])
    assert graphs[1] == graphs[0] + 1 and graphs[2] == graphs[1] + 1
    torch._dynamo.reset()
