"""CPU inference throughput of a BiFormer model (fp32, eval, no_grad).

Run from the repository root::

    python benchmarks/cpu_model_throughput.py                      # biformer_tiny, batch 8, 224
    python benchmarks/cpu_model_throughput.py --model biformer_small --threads 4 --json

Builds the model with random weights, runs ``--warmup`` forward passes, then times ``--iters``
passes of a ``batch x 3 x size x size`` input and prints images per second (median and best
iteration) with the thread count, the attention backend and the machine's load average (other
processes on the machine lower the number; quote it with the load).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import timm
import torch

import biformer  # registers the models


def measure(model_name: str, *, batch: int, size: int, threads: int, warmup: int, iters: int,
            backend: str) -> dict:
    """Seconds per forward pass of ``model_name`` -> a result record (images/s, settings)."""
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    biformer.ops.set_default_backend(backend)
    model = timm.create_model(model_name).eval()
    x = torch.randn(batch, 3, size, size)
    times = []
    with torch.inference_mode():
        for _ in range(warmup):
            model(x)
        for _ in range(iters):
            start = time.perf_counter()
            model(x)
            times.append(time.perf_counter() - start)
    median = statistics.median(times)
    return {
        "model": model_name,
        "batch": batch,
        "img_size": size,
        "dtype": "float32",
        "threads": threads,
        "backend": backend,
        "iters": iters,
        "median_s": median,
        "img_per_s_median": batch / median,
        "img_per_s_best": batch / min(times),
        "load_average_1min": os.getloadavg()[0],
        "torch": torch.__version__,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="biformer_tiny")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--iters", type=int, default=5)
    parser.add_argument("--backend", default="auto", help="routed-attention backend")
    parser.add_argument("--json", action="store_true", help="print the record as JSON")
    args = parser.parse_args(argv)
    if args.batch < 1 or args.iters < 1 or args.threads < 1:
        parser.error("--batch, --iters and --threads must be at least 1")
    record = measure(args.model, batch=args.batch, size=args.size, threads=args.threads,
                     warmup=args.warmup, iters=args.iters, backend=args.backend)
    if args.json:
        print(json.dumps(record, indent=2))
    else:
        print(f"{record['model']}: {record['img_per_s_median']:.1f} img/s median "
              f"({record['img_per_s_best']:.1f} best), batch {args.batch}, {args.size}x{args.size}, "
              f"fp32, {args.threads} threads, backend {args.backend}, "
              f"load average {record['load_average_1min']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
