"""Peak memory of the chunked backend stays bounded where the gather-based reference blows up.

The chunked BRA2d runs forward and backward on a high-resolution map in a fresh subprocess,
which reports its peak resident-set growth: its own high-water mark after the step (Linux
``VmHWM``, the per-process ``ru_maxrss``; plain ``ru_maxrss`` elsewhere) minus its resident set
after the imports and set-up. The reference backend's need for the same call comes from
``Problem.gathered_bytes()`` (gathered keys/values plus the attention matrix, forward only).
"""

import json
import os
import subprocess
import sys

import pytest
import torch

from biformer.layers.bra2d import region_grid
from biformer.ops.checks import Problem

resource = pytest.importorskip("resource", reason="ru_maxrss needs the Unix resource module")

SIZE = (168, 140)  # 7x7 regions of 24x20 tokens: 480 queries see 1920 keys per region
CHANNELS, HEADS, N_WIN, TOPK = 16, 4, 7, 4
TILE_MIB = 32  # tile budget of the chunked backend in the child (BIFORMER_CHUNK_MB)
BOUND_GIB = 1.5  # generous: the measured growth is ~0.1 GiB

CHILD = """
import json, resource, sys
import torch
from biformer.layers import BRA2d

def _status(field):
    try:
        with open("/proc/self/status") as f:
            return next(int(v.split()[1]) * 1024 for v in f if v.startswith(field + ":"))
    except (OSError, StopIteration):
        return None


def peak_bytes():
    # VmHWM is this process's own high-water mark; ru_maxrss would also count the parent's
    # resident set at exec time (a large pytest or benchmark parent hides the child's peak)
    hwm = _status("VmHWM")
    return hwm if hwm is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * (
        1 if sys.platform == "darwin" else 1024)


def reset_peak():
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # VmHWM := current resident set (Linux >= 4.0)
    except OSError:
        return peak_bytes()
    return _status("VmRSS")


torch.manual_seed(0)
torch.set_num_threads(1)  # memory does not depend on it; time on a busy machine does
c, heads, n_win, topk, h, w = (int(a) for a in sys.argv[1:7])
layer = BRA2d(c, num_heads=heads, n_win=n_win, topk=topk, backend="chunked")
x = torch.randn(1, c, h, w, requires_grad=True)
grad = torch.randn(1, c, h, w)
base = reset_peak()
out = layer(x)
out.backward(grad)
peak = peak_bytes()
ok = bool(torch.isfinite(out).all() and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0)
print(json.dumps({"growth": peak - base, "finite": ok}))
"""


def _reference_need() -> int:
    region, regions = region_grid(SIZE, N_WIN)
    d = CHANNELS // HEADS
    problem = Problem(
        device_type="cpu", dtype=torch.float32, batch=1, regions=regions, q_region=region,
        kv_region=region, topk=TOPK, num_heads=HEADS, qk_head_dim=d, v_head_dim=d,
        soft_routing=False, masked_keys=False, needs_grad=True,
    )
    return problem.gathered_bytes()


@pytest.mark.slow
def test_chunked_peak_memory_is_bounded_in_a_subprocess():
    env = dict(os.environ, BIFORMER_CHUNK_MB=str(TILE_MIB))
    args = [str(a) for a in (CHANNELS, HEADS, N_WIN, TOPK, *SIZE)]
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, *args], capture_output=True, text=True, env=env,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    growth, need = report["growth"], _reference_need()
    assert report["finite"], "chunked forward/backward produced non-finite values"
    assert 0 < growth < BOUND_GIB * 2**30, f"peak growth {growth / 2**20:.0f} MiB"
    # the reference would hold its whole gathered K/V and attention matrix: many times more
    assert need > 8 * growth, (
        f"reference needs {need / 2**20:.0f} MiB, chunked grew {growth / 2**20:.0f} MiB"
    )


def test_reference_need_estimate_grows_with_the_problem():
    """The estimate used above: ~1.4 GiB here, ~280 GiB at 1x32x600x500 (n_win 7, topk 4)."""
    need = _reference_need()
    assert 1.2 * 2**30 < need < 1.6 * 2**30
    region, regions = region_grid((600, 500), N_WIN)
    big = Problem(
        device_type="cpu", dtype=torch.float32, batch=1, regions=regions, q_region=region,
        kv_region=region, topk=TOPK, num_heads=HEADS, qk_head_dim=8, v_head_dim=8,
        soft_routing=False, masked_keys=False, needs_grad=True,
    )
    assert 250 * 2**30 < big.gathered_bytes() < 300 * 2**30
