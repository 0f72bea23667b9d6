"""Peak memory and time of BRA2d forward + backward at high resolution, on CPU.

Each (size, backend) runs in a fresh subprocess that reports its own peak resident-set growth
(its high-water mark after the step, Linux ``VmHWM`` or else ``ru_maxrss``, minus its resident
set after set-up) and the forward and backward times. The
gather-based reference is only run where its estimated need (``Problem.gathered_bytes()``:
gathered keys/values plus the attention matrix, forward only) fits ``--reference-max-gib``; its
estimate is printed for every size. ``flex`` runs the forward only (no CPU backward), timed and
measured after a first call that compiles it.

    python benchmarks/highres_memory.py                         # 1x32x{150x125 ... 600x500}
    python benchmarks/highres_memory.py --sizes 300x250 --backends chunked --json hires.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

from biformer.benchmarking import describe_environment, format_table
from biformer.layers.bra2d import region_grid
from biformer.ops.checks import Problem

CHILD = """
import json, resource, sys, time
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
backend = sys.argv[1]
c, heads, n_win, topk, h, w = (int(a) for a in sys.argv[2:8])
layer = BRA2d(c, num_heads=heads, n_win=n_win, topk=topk, backend=backend)
train = backend != "flex"
x = torch.randn(1, c, h, w, requires_grad=train)
grad = torch.randn(1, c, h, w)
if not train:  # flex: compile first, measure the second call
    with torch.no_grad():
        layer(x)
base = reset_peak()
t0 = time.perf_counter()
with torch.set_grad_enabled(train):
    out = layer(x)
t1 = time.perf_counter()
if train:
    out.backward(grad)
t2 = time.perf_counter()
peak = peak_bytes()
finite = bool(torch.isfinite(out).all())
print(json.dumps({"fwd_s": t1 - t0, "bwd_s": (t2 - t1) if train else None,
                  "growth_bytes": peak - base, "finite": finite}))
"""


def _size(text: str) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"size must look like 600x500, got {text!r}") from err
    return h, w


def reference_need(size: tuple[int, int], channels: int, heads: int, n_win: int,
                   topk: int) -> int:
    """Bytes the reference backend gathers for one BRA2d call on ``1 x channels x H x W``."""
    region, regions = region_grid(size, n_win)
    d = channels // heads
    problem = Problem(
        device_type="cpu", dtype=torch.float32, batch=1, regions=regions, q_region=region,
        kv_region=region, topk=min(topk, regions[0] * regions[1]), num_heads=heads,
        qk_head_dim=d, v_head_dim=d, soft_routing=False, masked_keys=False, needs_grad=True,
    )
    return problem.gathered_bytes()


def run_child(backend: str, size: tuple[int, int], args: argparse.Namespace) -> dict:
    env = dict(os.environ)
    if args.chunk_mb:
        env["BIFORMER_CHUNK_MB"] = str(args.chunk_mb)
    cmd = [sys.executable, "-c", CHILD, backend,
           *(str(v) for v in (args.channels, args.heads, args.n_win, args.topk, *size))]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env,
                              timeout=args.timeout)
    except subprocess.TimeoutExpired:
        return {"status": f"timed out after {args.timeout} s"}
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["?"])[-1]
        return {"status": f"failed ({last[:120]})"}
    return {"status": "ok", **json.loads(proc.stdout.strip().splitlines()[-1])}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="150x125,210x175,300x250,600x500",
                        type=lambda s: [_size(v) for v in s.split(",") if v],
                        help="comma-separated HxW (default: %(default)s)")
    parser.add_argument("--channels", type=int, default=32)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--n-win", type=int, default=7)
    parser.add_argument("--topk", type=int, default=4)
    parser.add_argument("--backends", default="chunked,reference",
                        help="comma-separated: chunked, reference, flex (default: %(default)s)")
    parser.add_argument("--reference-max-gib", type=float, default=6.0,
                        help="run the reference only where its estimate is below this")
    parser.add_argument("--chunk-mb", type=float, default=None,
                        help="tile budget of the chunked backend (BIFORMER_CHUNK_MB)")
    parser.add_argument("--timeout", type=float, default=3600.0, help="seconds per run")
    parser.add_argument("--json", default=None, help="write the results here")
    args = parser.parse_args(argv)
    backends = [b for b in args.backends.split(",") if b]
    for b in backends:
        if b not in ("chunked", "reference", "flex"):
            parser.error(f"unknown backend {b!r} in --backends (chunked, reference, flex)")

    env = describe_environment("cpu")
    print(f"BRA2d forward+backward on CPU ({env['machine']['cpu']}, "
          f"{env['machine']['torch_threads']} threads), torch {env['versions']['torch']}; "
          f"C={args.channels}, {args.heads} heads, n_win {args.n_win}, topk {args.topk}",
          flush=True)
    rows, results = [], []
    for size in args.sizes:
        need = reference_need(size, args.channels, args.heads, args.n_win, args.topk)
        region, regions = region_grid(size, args.n_win)
        for backend in backends:
            if backend == "reference" and need > args.reference_max_gib * 2**30:
                res = {"status": f"not run (estimate > {args.reference_max_gib:g} GiB)"}
            else:
                start = time.time()
                res = run_child(backend, size, args)
                res["wall_s"] = time.time() - start
            total = None
            if res.get("fwd_s") is not None:
                total = res["fwd_s"] + (res.get("bwd_s") or 0.0)
            growth = res.get("growth_bytes")
            rows.append([
                f"1x{args.channels}x{size[0]}x{size[1]}", f"{regions[0]}x{regions[1]}",
                region[0] * region[1], backend + (" (fwd only)" if backend == "flex" else ""),
                res.get("fwd_s"), total if backend != "flex" else None,
                growth / 2**20 if growth is not None else None, need / 2**30,
                "" if res["status"] == "ok" else res["status"],
            ])
            results.append({"size": list(size), "regions": list(regions),
                            "region_tokens": region[0] * region[1], "backend": backend,
                            "reference_estimate_bytes": need, **res})
            print(f"  {size[0]}x{size[1]} {backend}: {res['status']}", file=sys.stderr,
                  flush=True)
    print(format_table(
        ["input", "regions", "tokens/region", "backend", "fwd s", "fwd+bwd s",
         "peak RSS growth MiB", "reference estimate GiB", "notes"], rows))
    if args.json:
        record = {**env, "settings": {k: v for k, v in vars(args).items() if k != "json"},
                  "results": results}
        Path(args.json).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
        print(f"results written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
