"""Every model's numbers are frozen: fixed-seed forward passes compared with stored digests.

The digests in ``tests/data/model_digests.json`` were taken before the package's redesign; a
refactor must leave every output bit-identical. Weights are filled per parameter name (not by
construction order), so moving modules around does not change them; one CPU thread keeps the
reductions in a fixed order. ``BIFORMER_UPDATE_DIGESTS=1 pytest tests/test_model_digests.py``
rewrites the file (only when a change of numbers is intended and explained).
"""

from __future__ import annotations

import hashlib
import json
import os
import zlib
from pathlib import Path

import pytest
import timm
import torch

import biformer  # noqa: F401  (registers the models)

DIGESTS = Path(__file__).parent / "data" / "model_digests.json"

# name -> (model name, model kwargs, input size, train mode, backend)
CASES: dict[str, tuple[str, dict, tuple[int, int], bool, str | None]] = {
    "tiny_224": ("biformer_tiny", {}, (224, 224), False, None),
    "tiny_224_train": ("biformer_tiny", {}, (224, 224), True, None),
    "tiny_224_reference": ("biformer_tiny", {}, (224, 224), False, "reference"),
    "tiny_pad_200x170": ("biformer_tiny", {"auto_pad": True}, (200, 170), False, None),
    "small_224": ("biformer_small", {}, (224, 224), False, None),
    "base_224": ("biformer_base", {}, (224, 224), False, None),
    "stl_224": ("biformer_stl", {}, (224, 224), False, None),
    "stl_nchw_224": ("biformer_stl_nchw", {}, (224, 224), False, None),
    "stl_nchw_230x190": ("biformer_stl_nchw", {}, (230, 190), False, None),
    "tiny_os16_features": ("biformer_tiny", {"features_only": True, "output_stride": 16},
                           (224, 224), False, None),
}


def fill_weights(model: torch.nn.Module) -> None:
    """Deterministic weights from each state_dict entry's name (independent of module order)."""
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if not t.is_floating_point():
                continue
            gen = torch.Generator().manual_seed(zlib.crc32(name.encode()))
            if name.endswith("running_var"):
                t.copy_(torch.rand(t.shape, generator=gen) + 0.5)
            elif name.endswith("running_mean"):
                t.copy_(torch.randn(t.shape, generator=gen) * 0.1)
            elif t.dim() <= 1 and "weight" in name:  # norm scales
                t.copy_(1.0 + 0.1 * torch.randn(t.shape, generator=gen))
            else:
                t.copy_(torch.randn(t.shape, generator=gen) * 0.05)


def _digest(out) -> str:
    outs = out if isinstance(out, (list, tuple)) else [out]
    h = hashlib.sha256()
    for o in outs:
        o = o.detach().float().contiguous()
        h.update(str(tuple(o.shape)).encode())
        h.update(o.numpy().tobytes())
    return h.hexdigest()


def run_case(name: str) -> str:
    model_name, kwargs, size, train, backend = CASES[name]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        model = timm.create_model(model_name, **kwargs)
        fill_weights(model)
        model.train(train)
        x = torch.randn(2, 3, *size, generator=torch.Generator().manual_seed(1))
        with torch.no_grad():
            if backend is None:
                out = model(x)
            else:
                with biformer.ops.use_backend(backend):
                    out = model(x)
        return _digest(out)
    finally:
        torch.set_num_threads(threads)


def _stored() -> dict[str, str]:
    return json.loads(DIGESTS.read_text()) if DIGESTS.exists() else {}


@pytest.mark.slow
@pytest.mark.parametrize("case", sorted(CASES))
def test_model_outputs_unchanged(case):
    digest = run_case(case)
    if os.environ.get("BIFORMER_UPDATE_DIGESTS") == "1":
        stored = _stored()
        stored[case] = digest
        DIGESTS.write_text(json.dumps(dict(sorted(stored.items())), indent=2) + "\n")
        pytest.skip("digest updated")
    stored = _stored()
    assert case in stored, f"no stored digest for {case}; run with BIFORMER_UPDATE_DIGESTS=1"
    assert digest == stored[case], f"{case}: the model's outputs changed"
