"""torch.compile on CPU: matches eager, graph breaks counted."""

import pytest
import torch

from biformer.layers import BiLevelRoutingAttention, BRA2d


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["reference", "chunked"])
def test_compiled_layer_matches_eager(backend):
    torch._dynamo.reset()
    layer = BiLevelRoutingAttention(16, num_heads=2, n_win=2, topk=2, side_dwconv=5,
                                    backend=backend)
    x = torch.randn(2, 8, 8, 16, requires_grad=True)
    compiled = torch.compile(layer)
    out_c = compiled(x)
    out_e = layer(x)
    torch.testing.assert_close(out_c, out_e, rtol=1e-5, atol=1e-5)
    (gc,) = torch.autograd.grad(out_c.square().sum(), x)
    (ge,) = torch.autograd.grad(out_e.square().sum(), x)
    torch.testing.assert_close(gc, ge, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(
    "make",
    [
        lambda: BiLevelRoutingAttention(16, num_heads=2, n_win=2, topk=2, backend="reference"),
        lambda: BRA2d(16, num_heads=2, n_win=2, topk=2, backend="reference"),
    ],
)
def test_reference_path_has_no_graph_breaks(make):
    torch._dynamo.reset()
    layer = make()
    x = torch.randn(1, 8, 8, 16) if isinstance(layer, BiLevelRoutingAttention) else torch.randn(
        1, 16, 9, 7
    )
    explanation = torch._dynamo.explain(layer)(x)
    assert explanation.graph_break_count == 0, explanation.break_reasons
