"""Host time per call of the Triton backend around a no-op kernel (CPU or GPU).

Every kernel launch is replaced by a no-op, so what is timed is the work on the host: autocast
and layout checks, the cached launch plan, output allocation, the transposed routing of the
backward and autograd. Batch 1 at the BiFormer-S stage shapes keeps the few torch ops of a call
(the routing sort) negligible. On CPU this needs ``TRITON_INTERPRET=1`` (the backend's CPU
mode); no kernel runs either way::

    TRITON_INTERPRET=1 python benchmarks/gpu/host_overhead.py
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "src"))

import torch  # noqa: E402

STAGES = [("stage1", 56, 64, 2, 1), ("stage2", 28, 128, 4, 4), ("stage3", 14, 256, 8, 16)]


def median_us(fn, reps: int, warmup: int) -> float:
    """Median wall time of ``fn`` in microseconds."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e6


def measure(device: str, reps: int) -> list[dict]:
    """Per stage: forward without autograd, forward with autograd, forward + backward (us)."""
    from biformer.ops.backends import triton as backend
    from biformer.ops.backends.triton import launch

    launch.run = lambda kernel, tensors, extra=None: None  # the no-op kernel
    rows = []
    for name, side, channels, heads, topk in STAGES:
        x = torch.randn(1, side, side, 3 * channels, device=device, requires_grad=True)
        q, k, v = x.split(channels, dim=-1)
        index = torch.stack([torch.randperm(49)[:topk] for _ in range(49)]).view(1, 49, topk)
        index = index.to(device)
        kw = dict(n_win=(7, 7), num_heads=heads, scale=channels**-0.5)
        grad = torch.randn(1, side, side, channels, device=device)

        def infer(q=q, k=k, v=v, index=index, kw=kw):
            with torch.no_grad():
                backend.routed_attention(q, k, v, index, None, **kw)

        def forward(q=q, k=k, v=v, index=index, kw=kw):
            return backend.routed_attention(q, k, v, index, None, **kw)

        def train(x=x, forward=forward, grad=grad):
            torch.autograd.grad(forward(), [x], grad)

        fwd = median_us(forward, reps, reps // 10)
        both = median_us(train, reps, reps // 10)
        rows.append(dict(stage=name, infer_us=median_us(infer, reps, reps // 10), fwd_us=fwd,
                         fwd_bwd_us=both, bwd_us=both - fwd))
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--reps", type=int, default=300)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(f"host time per call, no-op kernels, {args.device}, batch 1 (median of {args.reps})")
    for row in measure(args.device, args.reps):
        print(f"  {row['stage']}: forward (no grad) {row['infer_us']:6.1f} us, forward "
              f"{row['fwd_us']:6.1f} us, backward {row['bwd_us']:6.1f} us, forward+backward "
              f"{row['fwd_bwd_us']:6.1f} us")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
