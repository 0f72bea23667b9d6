"""Peak memory of the chunked backend stays bounded where the gather-based reference blows up.

The chunked BRA2d runs forward and backward on a high-resolution map in a fresh subprocess
(``biformer.benchmarking.highres``), which reports its peak resident-set growth: its own
high-water mark after the step (Linux ``VmHWM``) minus its resident set after the set-up. The reference backend's need for the same call comes from
``Problem.gathered_bytes()`` (gathered keys/values plus the attention matrix, forward only).
"""

import pytest

from biformer.benchmarking.highres import measure_in_subprocess, reference_need
from biformer.benchmarking.measure import cpu_peak_supported

SIZE = (168, 140)  # 7x7 regions of 24x20 tokens: 480 queries see 1920 keys per region
CHANNELS, HEADS, N_WIN, TOPK = 16, 4, 7, 4
TILE_MIB = 32  # tile budget of the chunked backend in the child (BIFORMER_CHUNK_MB)
BOUND_GIB = 1.5  # generous: the measured growth is ~0.1 GiB


@pytest.mark.slow
@pytest.mark.skipif(not cpu_peak_supported(), reason="peak RSS needs Linux /proc (VmHWM)")
def test_chunked_peak_memory_is_bounded_in_a_subprocess():
    report = measure_in_subprocess("chunked", SIZE, CHANNELS, HEADS, N_WIN, TOPK,
                                   chunk_mb=TILE_MIB, threads=1, timeout=600)
    assert report["status"] == "ok", report["status"]
    growth, need = report["growth_bytes"], reference_need(SIZE, CHANNELS, HEADS, N_WIN, TOPK)
    assert report["finite"], "chunked forward/backward produced non-finite values or zero grads"
    assert report["fwd_s"] > 0 and report["bwd_s"] > 0
    assert 0 < growth < BOUND_GIB * 2**30, f"peak growth {growth / 2**20:.0f} MiB"
    # the reference would hold its whole gathered K/V and attention matrix: many times more
    assert need > 8 * growth, (
        f"reference needs {need / 2**20:.0f} MiB, chunked grew {growth / 2**20:.0f} MiB"
    )


def test_reference_need_estimate_grows_with_the_problem():
    """The estimate used above: ~1.4 GiB here, ~280 GiB at 1x32x600x500 (n_win 7, topk 4)."""
    need = reference_need(SIZE, CHANNELS, HEADS, N_WIN, TOPK)
    assert 1.2 * 2**30 < need < 1.6 * 2**30
    assert 250 * 2**30 < reference_need((600, 500), 32, HEADS, N_WIN, TOPK) < 300 * 2**30
