"""``biformer bench``: operator and model benchmarks, printed as tables, saved as JSON and PNG.

Examples::

    biformer bench --suite op --device cpu --batch 8            # BRA backends vs SDPA baselines
    biformer bench --suite model --device cuda --dtype bfloat16 --compile --json bench.json
    biformer bench --suite op --shapes stage3 --backends reference,chunked --plot charts/
"""

from __future__ import annotations

import argparse
import sys
import time

import torch

from .engine.paths import check_output_dir, check_output_file
from .errors import CommandError, InputError, one_line, require

SUITES = ("op", "model", "all")
LEVELS = ("layer", "core")


def _csv(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--suite", choices=SUITES, default="all",
                        help="op: attention layers/operators; model: whole backbones (default all)")
    parser.add_argument("--device", choices=("cpu", "cuda"), default=None,
                        help="default: cuda when available, else cpu")
    parser.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), default=None,
                        help="default: float32 on CPU, bfloat16 on CUDA (autocast for models)")
    parser.add_argument("--batch", type=int, default=None,
                        help="batch size (default 8 on CPU, 128 on CUDA)")
    parser.add_argument("--backends", type=_csv, default=None, metavar="NAMES",
                        help="comma-separated BRA backends (default: reference,chunked,flex on "
                             "CPU, all on CUDA; for models: pin BiFormer to each)")
    parser.add_argument("--compile", action="store_true",
                        help="also run every case under torch.compile")
    parser.add_argument("--steps", type=int, default=None, help="timed steps (median reported)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed steps first")
    parser.add_argument("--level", choices=LEVELS, default="layer",
                        help="op suite: whole attention layer (projections included) or the "
                             "attention core only")
    parser.add_argument("--shapes", type=_csv, default=None, metavar="NAMES",
                        help="op suite shapes: stage1,stage2,stage3,hires (default all)")
    parser.add_argument("--models", type=_csv, default=None, metavar="NAMES",
                        help="timm model names (default: biformer_tiny/small/base, swin_tiny/"
                             "small_patch4_window7_224, convnext_tiny)")
    parser.add_argument("--img-size", type=int, default=224, help="model suite input size")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (torch)")
    parser.add_argument("--max-gib", type=float, default=None,
                        help="skip cases estimated to need more (default 6 on CPU, 80%% of GPU)")
    parser.add_argument("--json", default=None, metavar="PATH", help="write all results here")
    parser.add_argument("--plot", default=None, metavar="DIR", help="write PNG bar charts here")


def _settings(args: argparse.Namespace):
    from . import ops
    from .benchmarking import SHAPES, BenchSettings

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise CommandError("--device cuda but no CUDA GPU is available; use --device cpu")
    for name in ("batch", "steps", "img_size", "threads"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise CommandError(f"--{name.replace('_', '-')} must be >= 1, got {value}")
    if args.warmup is not None and args.warmup < 0:
        raise CommandError(f"--warmup must be >= 0, got {args.warmup}")
    if args.max_gib is not None and args.max_gib <= 0:
        raise CommandError(f"--max-gib must be positive, got {args.max_gib}")
    for backend in args.backends or []:
        if backend not in ops.BACKENDS:
            raise CommandError(f"unknown backend {backend!r} in --backends; choose from "
                               f"{', '.join(ops.BACKENDS)}")
    for shape in args.shapes or []:
        if shape not in SHAPES:
            raise CommandError(f"unknown shape {shape!r} in --shapes; choose from "
                               f"{', '.join(SHAPES)}")
    if args.backends == [] or args.shapes == [] or args.models == []:
        raise CommandError("--backends, --shapes and --models need at least one name")
    if args.models:
        import timm

        from . import models  # noqa: F401  (registers the BiFormer models with timm)

        unknown = [m for m in args.models if not timm.is_model(m)]
        if unknown:
            raise CommandError(f"--models: unknown model(s) {', '.join(unknown)} (timm names, "
                               "e.g. biformer_small,swin_small_patch4_window7_224)")
    return BenchSettings(
        device=device,
        dtype=args.dtype or ("bfloat16" if device == "cuda" else "float32"),
        batch=args.batch, backends=args.backends, compile=args.compile, steps=args.steps,
        warmup=args.warmup, level=args.level, shapes=args.shapes or list(SHAPES),
        models=args.models, img_size=args.img_size, max_gib=args.max_gib,
    )


def main(args: argparse.Namespace) -> int:
    settings = _settings(args)
    try:  # outputs are checked before the (long) benchmark runs
        if args.plot:
            require("matplotlib", "viz", "--plot")
            check_output_dir(args.plot, what="--plot")
        if args.json:
            check_output_file(args.json, suffixes=(".json",))
    except InputError as err:
        raise CommandError(one_line(err)) from None
    threads = torch.get_num_threads()
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        return _run(args, settings)
    finally:
        torch.set_num_threads(threads)


def _run(args: argparse.Namespace, settings) -> int:
    from .benchmarking import (
        describe_environment,
        model_table,
        op_table,
        plot_results,
        run_model_suite,
        run_op_suite,
        write_json,
    )
    from .benchmarking.op_suite import method_names

    env = describe_environment(settings.device)
    machine = env["machine"]
    where = machine.get("gpu") or f"{machine['cpu']}, {machine['torch_threads']} threads"
    print(f"biformer bench: {settings.device} ({where}), {settings.dtype}, torch "
          f"{env['versions']['torch']}, timm {env['versions']['timm']}", flush=True)

    def log(message: str) -> None:
        print("  " + message, file=sys.stderr, flush=True)

    results: dict[str, list] = {}
    start = time.time()
    if args.suite in ("op", "all"):
        results["op"] = run_op_suite(settings, log=log)
    if args.suite in ("model", "all"):
        results["model"] = run_model_suite(settings, log=log)
    env["machine"]["load_average_after"] = describe_environment("cpu")["machine"]["load_average"]
    record = {
        **env,
        "settings": {**settings.as_dict(), "op": settings.resolved("op"),
                     "model": settings.resolved("model"), "methods": method_names(settings)},
        "results": results,
        "wall_s": round(time.time() - start, 1),
    }
    if "op" in results:
        memory = next((r["memory_kind"] for r in results["op"] if r["memory_kind"]), "-")
        print(f"\nOperator benchmark ({settings.level} level; memory: {memory})")
        print(op_table(results["op"]))
    if "model" in results:
        memory = next((r["memory_kind"] for r in results["model"] if r["memory_kind"]), "-")
        print(f"\nModel benchmark (img {settings.img_size}; memory: {memory})")
        print(model_table(results["model"]))
    if args.json:
        print(f"\nresults written to {write_json(args.json, record)}")
    if args.plot:
        for path in plot_results(record, args.plot):
            print(f"chart written to {path}")
    return 0
