"""GPU check of the ``triton`` routed-attention backend: accuracy, determinism, timings.

Run on a machine with a CUDA GPU, from the repository root::

    python benchmarks/triton_gpu_check.py --out triton_check.json

1. Accuracy: bf16 Triton kernels vs the float32 ``reference`` backend at the BiFormer-S stage
   shapes (batch ``--check-batch``), with and without soft routing: relative RMS error of the
   output and of every gradient (q, k, v, routing weight) against the thresholds in
   ``THRESHOLDS``; the bf16 reference's own error is printed beside it for context.
2. Determinism: two bf16 backward passes (soft routing, so every kernel runs) must be
   bit-identical.
3. Timings (CUDA events, warm-up, median) at batch ``--batch`` in bf16, per stage: the attention
   core (Triton forward and forward+backward, the gather-based reference, SDPA 7x7 window
   attention and SDPA global attention on the same q/k/v), one whole attention layer
   (projections included; BRA with each backend, a 7x7 window-attention layer, a global one) under
   bf16 autocast, and the forward's memory floor (read Q, K, V, write O at the measured copy
   bandwidth) with the fraction of it the Triton forward achieves.

Prints a table and writes JSON to ``--out``. Exit status: 0 when accuracy and determinism pass
(speed targets are reported, and only fail the run with ``--strict``), 1 on a failure, 2 without a
GPU. It takes well under 3 minutes on an H100. ``--smoke-cpu`` runs every step on tiny CPU
inputs with batch 1 and one timed run (needs ``TRITON_INTERPRET=1``) to check the script
itself, not the kernels' speed.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

try:
    import biformer  # noqa: F401
except ImportError:  # running from a source checkout
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from biformer import ops
from biformer.benchmarking import median_ms, time_steps
from biformer.layers import BiLevelRoutingAttention

# name, tokens per side, channels, heads, topk (BiFormer-S at 224 x 224, n_win 7, head_dim 32)
STAGES = [
    ("stage1", 56, 64, 2, 1),
    ("stage2", 28, 128, 4, 4),
    ("stage3", 14, 256, 8, 16),
]
# --smoke-cpu: the same region sizes (8x8 -> 2x2, 2x2, 1x1 tokens) and topks on tiny maps
SMOKE_STAGES = [
    ("stage1", 14, 32, 2, 1),
    ("stage2", 14, 32, 2, 4),
    ("stage3", 7, 32, 2, 16),
]
N_WIN = 7
WINDOW = 7
# relative RMS error of bf16 Triton vs the fp32 reference (bf16 rounding alone is ~3e-3)
THRESHOLDS = {"out": 1e-2, "dq": 2e-2, "dk": 2e-2, "dv": 2e-2, "dw": 3e-2}
FLOOR_FACTOR = 3.0  # target: Triton forward within 3x of the memory floor


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    parser.add_argument("--batch", type=int, default=128, help="batch of the timings")
    parser.add_argument("--check-batch", type=int, default=8, help="batch of the accuracy check")
    parser.add_argument("--warmup", type=int, default=5, help="untimed runs before timing")
    parser.add_argument("--reps", type=int, default=25, help="timed runs (median reported)")
    parser.add_argument("--strict", action="store_true", help="also fail on missed speed targets")
    parser.add_argument(
        "--smoke-cpu", action="store_true",
        help="run on tiny CPU inputs in the Triton interpreter (checks the script only)",
    )
    args = parser.parse_args(argv)
    for name in ("batch", "check_batch", "reps"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1")
    if args.warmup < 0:
        parser.error("--warmup must be >= 0")
    return args


# ------------------------------------------------------------------------------------------------
# helpers


class Bench:
    """Median wall time of a callable: CUDA events on a GPU, perf_counter on CPU."""

    def __init__(self, device: torch.device, warmup: int, reps: int):
        self.device, self.warmup, self.reps = device, warmup, reps

    def __call__(self, fn: Callable[[], object]) -> float:
        """Milliseconds (median of ``reps`` runs after ``warmup`` runs)."""
        return median_ms(time_steps(fn, steps=self.reps, warmup=self.warmup,
                                    device=self.device.type))


def rel_rms(got: Tensor, want: Tensor) -> float:
    """Relative RMS error ``||got - want|| / ||want||`` in float64."""
    got, want = got.double(), want.double()
    return ((got - want).square().mean().sqrt() / want.square().mean().sqrt().clamp_min(1e-30)).item()


def routing_for(q: Tensor, k: Tensor, topk: int, scale: float) -> tuple[Tensor, Tensor]:
    """Realistic routing: top-k of region-mean affinities (as the BRA layer computes it)."""
    with torch.no_grad():
        qr = ops.region_mean(q.float(), (N_WIN, N_WIN))
        kr = ops.region_mean(k.float(), (N_WIN, N_WIN))
        return ops.topk_routing(qr, kr, topk=topk, scale=scale)


def window_attention(q: Tensor, k: Tensor, v: Tensor, heads: int, window: int) -> Tensor:
    """7x7 window attention with SDPA on NHWC q/k/v (partition, attend, merge)."""
    b, h, w, c = q.shape

    def split(x: Tensor) -> Tensor:  # B, H, W, C -> B*nW, heads, window*window, d
        x = x.reshape(b, h // window, window, w // window, window, heads, c // heads)
        return x.permute(0, 1, 3, 5, 2, 4, 6).reshape(-1, heads, window * window, c // heads)

    out = F.scaled_dot_product_attention(split(q), split(k), split(v))
    out = out.reshape(b, h // window, w // window, heads, window, window, c // heads)
    return out.permute(0, 1, 4, 2, 5, 3, 6).reshape(b, h, w, c)


def global_attention(q: Tensor, k: Tensor, v: Tensor, heads: int) -> Tensor:
    """Global attention with SDPA over all tokens of each image, NHWC in and out."""
    b, h, w, c = q.shape

    def split(x: Tensor) -> Tensor:
        return x.reshape(b, h * w, heads, c // heads).transpose(1, 2)

    out = F.scaled_dot_product_attention(split(q), split(k), split(v))
    return out.transpose(1, 2).reshape(b, h, w, c)


class SdpaLayer(nn.Module):
    """Attention layer of the same width for the baselines: qkv, SDPA (window or global), proj."""

    def __init__(self, dim: int, heads: int, window: int | None):
        super().__init__()
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.heads, self.window = heads, window

    def forward(self, x: Tensor) -> Tensor:  # B, H, W, C
        q, k, v = self.qkv(x).chunk(3, dim=-1)
        if self.window is None:
            out = global_attention(q, k, v, self.heads)
        else:
            out = window_attention(q, k, v, self.heads, self.window)
        return self.proj(out)


# ------------------------------------------------------------------------------------------------
# checks


def check_accuracy(device: torch.device, dtype: torch.dtype, batch: int,
                   stages: list[tuple]) -> list[dict]:
    """bf16 (or ``dtype``) Triton vs the fp32 reference, per stage, hard and soft routing."""
    rows = []
    for name, side, channels, heads, topk in stages:
        for soft in (False, True):
            gen = torch.Generator(device=device).manual_seed(0)
            proj = torch.randn(batch, side, side, 3 * channels, device=device, generator=gen)
            scale = channels**-0.5
            weights, index = routing_for(proj[..., :channels], proj[..., channels:2 * channels],
                                         topk, scale)
            grad_out = torch.randn(batch, side, side, channels, device=device, generator=gen)
            results = {}
            for label, backend, dt in (("ref32", "reference", torch.float32),
                                       ("ref16", "reference", dtype),
                                       ("triton", "triton", dtype)):
                x = proj.detach().to(dt).requires_grad_()
                w = weights.detach().to(dt).requires_grad_() if soft else None
                q, k, v = x.split(channels, dim=-1)
                out = ops.routed_attention(
                    q, k, v, index, regions=N_WIN, num_heads=heads, scale=scale, weight=w,
                    backend=backend,
                )
                leaves = [x] + ([w] if soft else [])
                grads = torch.autograd.grad(out, leaves, grad_out.to(dt))
                dq, dk, dv = grads[0].split(channels, dim=-1)
                results[label] = dict(out=out, dq=dq, dk=dk, dv=dv)
                if soft:
                    results[label]["dw"] = grads[1]
            errors = {key: rel_rms(results["triton"][key], results["ref32"][key])
                      for key in results["ref32"]}
            context = {key: rel_rms(results["ref16"][key], results["ref32"][key])
                       for key in results["ref32"]}
            passed = all(errors[key] <= THRESHOLDS[key] for key in errors)
            rows.append(dict(stage=name, soft=soft, errors=errors, ref16_errors=context,
                             passed=passed))
    return rows


def check_determinism(device: torch.device, dtype: torch.dtype, batch: int,
                      stages: list[tuple]) -> dict:
    """Two backward passes (soft routing: all three kernels and the weight gradient) must be
    bit-identical at every stage."""
    result = {}
    for name, side, channels, heads, topk in stages:
        gen = torch.Generator(device=device).manual_seed(1)
        proj = torch.randn(batch, side, side, 3 * channels, device=device, generator=gen)
        weights, index = routing_for(proj[..., :channels], proj[..., channels:2 * channels], topk,
                                     channels**-0.5)
        grad_out = torch.randn(batch, side, side, channels, device=device, generator=gen).to(dtype)
        runs = []
        for _ in range(2):
            x = proj.to(dtype).requires_grad_()
            w = weights.to(dtype).requires_grad_()
            q, k, v = x.split(channels, dim=-1)
            out = ops.routed_attention(
                q, k, v, index, regions=N_WIN, num_heads=heads, scale=channels**-0.5, weight=w,
                backend="triton",
            )
            runs.append((out, *torch.autograd.grad(out, [x, w], grad_out)))
        result[name] = all(torch.equal(a, b) for a, b in zip(*runs, strict=True))
    return result


def copy_bandwidth(device: torch.device, bench: Bench) -> float:
    """Device copy bandwidth in bytes/s, counting bytes read and written."""
    n = (1 << 30) if device.type == "cuda" else (1 << 22)
    src = torch.empty(n, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    ms = bench(lambda: dst.copy_(src))
    return 2 * n / (ms * 1e-3)


def time_stage(
    stage: tuple, device: torch.device, dtype: torch.dtype, batch: int, bench: Bench,
    bandwidth: float,
) -> dict:
    """Timings (ms) of the attention core and of whole layers at one stage shape."""
    name, side, channels, heads, topk = stage
    scale = channels**-0.5
    gen = torch.Generator(device=device).manual_seed(2)
    proj = torch.randn(batch, side, side, 3 * channels, device=device, generator=gen).to(dtype)
    proj.requires_grad_()
    q, k, v = proj.split(channels, dim=-1)
    _, index = routing_for(q, k, topk, scale)
    grad_out = torch.randn(batch, side, side, channels, device=device, dtype=dtype)

    def routed(backend: str) -> Tensor:
        return ops.routed_attention(
            q, k, v, index, regions=N_WIN, num_heads=heads, scale=scale, backend=backend
        )

    cores = {
        "triton": lambda: routed("triton"),
        "reference": lambda: routed("reference"),
        "window7x7_sdpa": lambda: window_attention(q, k, v, heads, WINDOW),
        "global_sdpa": lambda: global_attention(q, k, v, heads),
    }
    row: dict = {"stage": name, "core_fwd_ms": {}, "core_fwd_bwd_ms": {}, "layer_fwd_bwd_ms": {}}
    peak: dict = {}
    for label, fn in cores.items():
        with torch.no_grad():
            row["core_fwd_ms"][label] = bench(fn)

        def fwd_bwd(fn=fn):
            torch.autograd.grad(fn(), [proj], grad_out)

        if device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        row["core_fwd_bwd_ms"][label] = bench(fwd_bwd)
        if device.type == "cuda":
            peak[label] = torch.cuda.max_memory_allocated() / 2**20
    row["core_fwd_bwd_peak_mib"] = peak

    # whole layers under autocast, projections included
    x = torch.randn(batch, side, side, channels, device=device, requires_grad=True)
    layers = {
        "bra_triton": BiLevelRoutingAttention(channels, num_heads=heads, n_win=N_WIN, topk=topk,
                                              side_dwconv=5, backend="triton"),
        "bra_reference": BiLevelRoutingAttention(channels, num_heads=heads, n_win=N_WIN,
                                                 topk=topk, side_dwconv=5, backend="reference"),
        "window7x7_sdpa": SdpaLayer(channels, heads, WINDOW),
        "global_sdpa": SdpaLayer(channels, heads, None),
    }
    grad_layer = torch.randn(batch, side, side, channels, device=device)
    for label, layer in layers.items():
        layer = layer.to(device)

        def step(layer=layer):
            with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
                out = layer(x)
            torch.autograd.grad(out, [x, *layer.parameters()], grad_layer.to(out.dtype))

        row["layer_fwd_bwd_ms"][label] = bench(step)

    # memory floor of the forward: read Q, K, V, write O
    itemsize = torch.empty((), dtype=dtype).element_size()
    floor_bytes = 4 * batch * side * side * channels * itemsize
    row["floor_bytes"] = floor_bytes
    row["floor_ms"] = floor_bytes / bandwidth * 1e3
    row["floor_fraction"] = row["floor_ms"] / row["core_fwd_ms"]["triton"]
    row["target_layer_vs_window"] = (
        row["layer_fwd_bwd_ms"]["bra_triton"] <= row["layer_fwd_bwd_ms"]["window7x7_sdpa"]
    )
    row["target_floor"] = row["core_fwd_ms"]["triton"] <= FLOOR_FACTOR * row["floor_ms"]
    return row


# ------------------------------------------------------------------------------------------------
# report


def format_report(accuracy: list[dict], determinism: dict, timings: list[dict]) -> str:
    """Human-readable tables of the results."""
    lines = ["accuracy: relative RMS error vs fp32 reference (bf16 reference in brackets)"]
    keys = list(THRESHOLDS)
    lines.append(f"  {'stage':8s} {'soft':5s} " + " ".join(f"{k:>18s}" for k in keys) + "  ok")
    for row in accuracy:
        cells = []
        for key in keys:
            if key in row["errors"]:
                cells.append(f"{row['errors'][key]:8.2e} [{row['ref16_errors'][key]:7.1e}]")
            else:
                cells.append(f"{'-':>18s}")
        lines.append(
            f"  {row['stage']:8s} {str(row['soft']):5s} " + " ".join(cells)
            + f"  {'yes' if row['passed'] else 'NO'}"
        )
    lines.append("  thresholds: " + ", ".join(f"{k} {v:g}" for k, v in THRESHOLDS.items()))
    lines.append(
        "determinism (bit-identical backward): "
        + ", ".join(f"{k} {'yes' if v else 'NO'}" for k, v in determinism.items())
    )
    if timings:
        cores = list(timings[0]["core_fwd_ms"])
        layers = list(timings[0]["layer_fwd_bwd_ms"])
        lines.append("attention core, ms (median): fwd / fwd+bwd")
        lines.append("  " + f"{'stage':8s}" + "".join(f"{c:>22s}" for c in cores))
        for row in timings:
            cells = "".join(
                f"{row['core_fwd_ms'][c]:10.3f} /{row['core_fwd_bwd_ms'][c]:9.3f}" for c in cores
            )
            lines.append(f"  {row['stage']:8s}{cells}")
        lines.append("layer fwd+bwd (projections included, autocast), ms")
        lines.append("  " + f"{'stage':8s}" + "".join(f"{c:>16s}" for c in layers))
        for row in timings:
            cells = "".join(f"{row['layer_fwd_bwd_ms'][c]:16.3f}" for c in layers)
            lines.append(f"  {row['stage']:8s}{cells}")
        lines.append("forward memory floor (read Q, K, V, write O at copy bandwidth)")
        for row in timings:
            lines.append(
                f"  {row['stage']:8s} floor {row['floor_ms'] * 1e3:8.1f} us  triton "
                f"{row['core_fwd_ms']['triton'] * 1e3:8.1f} us  achieved "
                f"{row['floor_fraction']:6.1%}  (target >= {1 / FLOOR_FACTOR:.0%}: "
                f"{'met' if row['target_floor'] else 'MISSED'});  layer vs 7x7 window: "
                f"{'met' if row['target_layer_vs_window'] else 'MISSED'}"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.smoke_cpu:
        if os.environ.get("TRITON_INTERPRET") != "1":
            print("triton_gpu_check: --smoke-cpu needs TRITON_INTERPRET=1", file=sys.stderr)
            return 2
        device, dtype, stages = torch.device("cpu"), torch.float32, SMOKE_STAGES
        args.batch = args.check_batch = args.reps = 1
        args.warmup = 0
    elif not torch.cuda.is_available():
        print(
            "triton_gpu_check: no CUDA GPU found; this check times and validates the compiled "
            "Triton kernels and must run on a GPU machine (the CPU tests cover the interpreter)",
            file=sys.stderr,
        )
        return 2
    else:
        device, dtype, stages = torch.device("cuda"), torch.bfloat16, STAGES
    t0 = time.perf_counter()
    torch.manual_seed(0)
    bench = Bench(device, args.warmup, args.reps)
    accuracy = check_accuracy(device, dtype, args.check_batch, stages)
    determinism = check_determinism(device, dtype, args.check_batch, stages)
    bandwidth = copy_bandwidth(device, bench)
    timings = [time_stage(s, device, dtype, args.batch, bench, bandwidth) for s in stages]
    passed = all(r["passed"] for r in accuracy) and all(determinism.values())
    targets_met = all(r["target_layer_vs_window"] and r["target_floor"] for r in timings)
    print(format_report(accuracy, determinism, timings))
    print(f"copy bandwidth {bandwidth / 1e12:.2f} TB/s; total {time.perf_counter() - t0:.0f} s")
    print(f"accuracy and determinism: {'PASS' if passed else 'FAIL'}; speed targets: "
          f"{'met' if targets_met else 'not all met'}")
    if args.out is not None:
        import triton

        report = dict(
            device=torch.cuda.get_device_name() if device.type == "cuda" else "cpu (smoke)",
            torch=torch.__version__, triton=triton.__version__, dtype=str(dtype),
            batch=args.batch, check_batch=args.check_batch, reps=args.reps,
            thresholds=THRESHOLDS, copy_bandwidth_bytes_per_s=bandwidth,
            accuracy=accuracy, determinism=determinism, timings=timings, passed=passed,
            targets_met=targets_met,
        )
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2))
        print(f"wrote {args.out}")
    if not passed or (args.strict and not targets_met):
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
