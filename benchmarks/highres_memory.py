"""Peak memory and time of BRA2d forward + backward at high resolution, on CPU.

Each (size, backend) runs in a fresh subprocess (``biformer.benchmarking.highres``) that reports
its own peak resident-set growth (its high-water mark after the step, Linux ``VmHWM``, minus its
resident set after set-up) and the forward and backward times. The
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
import sys
import time
from pathlib import Path

from biformer.benchmarking import describe_environment, format_table
from biformer.benchmarking.highres import measure_in_subprocess, reference_need
from biformer.layers.bra2d import region_layout


def _size(text: str) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"size must look like 600x500, got {text!r}") from err
    return h, w


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
        region, regions = region_layout(size, args.n_win)
        for backend in backends:
            if backend == "reference" and need > args.reference_max_gib * 2**30:
                res = {"status": f"not run (estimate > {args.reference_max_gib:g} GiB)"}
            else:
                start = time.time()
                res = measure_in_subprocess(
                    backend, size, args.channels, args.heads, args.n_win, args.topk,
                    chunk_mb=args.chunk_mb, timeout=args.timeout,
                )
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
