"""GPU check of the ``triton`` routed-attention backend: accuracy, determinism, verdicts (b), (c).

Run on a machine with a CUDA GPU, from the repository root (``benchmarks/gpu_check.sh`` does)::

    python benchmarks/triton_gpu_check.py --out OUT/triton.json

1. Accuracy, the flash-attention criterion: against an fp64 reference, the Triton kernels' error
   in bf16 and in fp16 is at most twice the error of plain PyTorch (the reference backend) in the
   same precision, for the output and the q, k, v and routing-weight gradients, at the
   BiFormer-S stage shapes (batch ``--check-batch``), hard and soft routing.
2. Determinism: ``--determinism-reps`` (20) bf16 forward + backward passes at batch ``--batch``
   (128) with soft routing (every kernel) give bit-identical outputs and gradients.
3. (c) the attention core's kernel time (CUDA-graph replay) within 3x of its memory floor
   (forward: read Q, K, V, write O; forward + backward: also read O, dO and write dQ, dK, dV, at
   the measured copy bandwidth), with the time as called (eager, host included) beside it;
   (b) each BRA layer of BiFormer-S (the model's own modules: projections and LePE included)
   forward + backward no slower than 7x7 window attention of the same width (bf16 autocast).

Prints tables and ``VERDICT`` lines (also appended to ``--verdicts DIR/verdicts.txt``), writes
JSON to ``--out``. Exit status: 0 when accuracy and determinism pass (``--strict``: and the
verdicts are met), 1 otherwise, 2 without a GPU. ``--smoke-cpu`` runs every step on tiny CPU
inputs in the interpreter (``TRITON_INTERPRET=1``) in float32 to check the script itself.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent / "gpu"))

import torch  # noqa: E402
from common import Verdicts, copy_bandwidth, eager_ms, kernel_ms, max_err, rel_rms  # noqa: E402

from biformer import ops  # noqa: E402
from biformer.benchmarking.baselines import WindowAttention, window_attention_core  # noqa: E402
from biformer.ops.backends.triton.autotune import BIFORMER_S_STAGES  # noqa: E402

# --smoke-cpu: the same region sizes (8x8 -> 2x2, 2x2, 1x1 tokens) and topks on tiny maps
SMOKE_STAGES = [("stage1", 14, 32, 2, 1), ("stage2", 14, 32, 2, 4), ("stage3", 7, 32, 2, 16)]
N_WIN = 7
FLOOR_FACTOR = 3.0
KEYS = ("out", "dq", "dk", "dv", "dw")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    parser.add_argument("--verdicts", type=Path, default=None,
                        help="append verdict lines to DIR/verdicts.txt (default: --out's folder)")
    parser.add_argument("--batch", type=int, default=128, help="batch of timings, determinism")
    parser.add_argument("--check-batch", type=int, default=8, help="batch of the accuracy check")
    parser.add_argument("--reps", type=int, default=20, help="timed runs (median reported)")
    parser.add_argument("--determinism-reps", type=int, default=20)
    parser.add_argument("--strict", action="store_true", help="also fail on missed verdicts")
    parser.add_argument("--smoke-cpu", action="store_true",
                        help="run on tiny CPU inputs in the Triton interpreter (checks the script)")
    args = parser.parse_args(argv)
    for name in ("batch", "check_batch", "reps", "determinism_reps"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1")
    if args.verdicts is None and args.out is not None:
        args.verdicts = args.out.parent
    return args


def _inputs(stage, batch, device, seed):
    """A projection ``[B, H, W, 3C]`` (fp32), top-k routing of its region means, ``dO``."""
    _, side, channels, _, topk = stage
    gen = torch.Generator(device=device).manual_seed(seed)
    proj = torch.randn(batch, side, side, 3 * channels, device=device, generator=gen)
    with torch.no_grad():
        qr = ops.region_mean(proj[..., :channels], (N_WIN, N_WIN))
        kr = ops.region_mean(proj[..., channels:2 * channels], (N_WIN, N_WIN))
        weights, index = ops.topk_routing(qr, kr, topk=topk, scale=channels**-0.5)
    grad_out = torch.randn(batch, side, side, channels, device=device, generator=gen)
    return proj, weights, index, grad_out


def _run(stage, proj, weights, index, grad_out, dtype, backend, soft):
    """Output and gradients (q, k, v, weight) of one backend in ``dtype``."""
    _, _, channels, heads, _ = stage
    x = proj.detach().to(dtype).requires_grad_()
    w = weights.detach().to(dtype).requires_grad_() if soft else None
    q, k, v = x.split(channels, dim=-1)
    out = ops.routed_attention(q, k, v, index, n_win=N_WIN, num_heads=heads,
                               scale=channels**-0.5, weight=w, backend=backend)
    grads = torch.autograd.grad(out, [x] + ([w] if soft else []), grad_out.to(dtype))
    dq, dk, dv = grads[0].split(channels, dim=-1)
    result = dict(out=out, dq=dq, dk=dk, dv=dv)
    if soft:
        result["dw"] = grads[1]
    return result


def check_accuracy(device, dtypes, batch, stages) -> list[dict]:
    """Kernel error <= 2x plain-PyTorch error (same dtype) vs an fp64 reference."""
    rows = []
    for stage in stages:
        for soft in (False, True):
            inputs = _inputs(stage, batch, device, seed=0)
            exact = _run(stage, *inputs, torch.float64, "reference", soft)
            for dtype in dtypes:
                plain = _run(stage, *inputs, dtype, "reference", soft)
                kernel = _run(stage, *inputs, dtype, "triton", soft)
                row = dict(stage=stage[0], soft=soft, dtype=str(dtype).replace("torch.", ""),
                           kernel={}, plain={}, rel_rms={})
                for key in exact:
                    floor = 1e-5 * exact[key].abs().max().item()
                    row["kernel"][key] = max_err(kernel[key], exact[key])
                    row["plain"][key] = max_err(plain[key], exact[key]) + floor
                    row["rel_rms"][key] = rel_rms(kernel[key], exact[key])
                row["passed"] = all(row["kernel"][k] <= 2 * row["plain"][k] for k in exact)
                rows.append(row)
    return rows


def check_determinism(device, dtype, batch, stages, reps) -> dict[str, bool]:
    """``reps`` soft-routing forward + backward passes are bit-identical, per stage."""
    result = {}
    for stage in stages:
        inputs = _inputs(stage, batch, device, seed=1)
        first = _run(stage, *inputs, dtype, "triton", True)
        same = True
        for _ in range(reps - 1):
            again = _run(stage, *inputs, dtype, "triton", True)
            same = same and all(torch.equal(first[k], again[k]) for k in first)
        result[stage[0]] = same
    return result


def _core_calls(stage, batch, device, dtype):
    """Forward and forward + backward closures of the Triton core, the gather-based reference
    core and 7x7 window attention on the same q, k, v."""
    _, side, channels, heads, _ = stage
    proj, _, index, grad_out = _inputs(stage, batch, device, seed=2)
    x = proj.to(dtype).requires_grad_()
    grad_out = grad_out.to(dtype)
    kw = dict(n_win=N_WIN, num_heads=heads, scale=channels**-0.5, validate=False)
    cores = {
        "triton": lambda q, k, v: ops.routed_attention(q, k, v, index, backend="triton", **kw),
        "reference": lambda q, k, v: ops.routed_attention(q, k, v, index, backend="reference",
                                                          **kw),
        "window7x7": lambda q, k, v: window_attention_core(q, k, v, num_heads=heads),
    }

    def fwd(core):
        with torch.no_grad():
            core(*x.split(channels, dim=-1))

    def fwd_bwd(core):
        torch.autograd.grad(core(*x.split(channels, dim=-1)), [x], grad_out)

    return cores, fwd, fwd_bwd


def _layers(stages, device, smoke: bool) -> dict:
    """Per stage, the first BRA module of that BiFormer-S stage (the model's own: 64, 128, 256
    channels); for the smoke run, BRA layers of the smoke widths."""
    import timm

    from biformer.layers import BiLevelRoutingAttention

    if smoke:
        return {s[0]: BiLevelRoutingAttention(s[2], num_heads=s[3], n_win=N_WIN, topk=s[4],
                                              side_dwconv=5).to(device) for s in stages}
    model = timm.create_model("biformer_small")
    found = {}
    for module in model.modules():
        if isinstance(module, BiLevelRoutingAttention):
            found.setdefault(module.dim, module)
    return {s[0]: found[s[2]].to(device) for s in stages}


def time_layers(stage, batch, device, bra, reps: int) -> dict[str, float]:
    """Forward + backward ms of the BRA layer and of 7x7 window attention (bf16 autocast)."""
    _, side, channels, heads, _ = stage
    window = WindowAttention(channels, heads).to(device)
    x = torch.randn(batch, side, side, channels, device=device, requires_grad=True)
    autocast = torch.autocast(device_type=torch.device(device).type, dtype=torch.bfloat16,
                              enabled=torch.device(device).type == "cuda")
    result = {}
    for name, layer in (("bra", bra), ("window7x7", window)):
        def step(layer=layer):
            with autocast:
                out = layer(x)
            out.float().sum().backward()
        result[name] = eager_ms(step, device, reps=reps, warmup=min(3, reps - 1))
    return result


def time_stage(stage, batch, device, dtype, bandwidth, layers, reps) -> dict:
    """Kernel and as-called times of the cores, the memory floors and the layer times."""
    name, side, channels, _, _ = stage
    cores, fwd, fwd_bwd = _core_calls(stage, batch, device, dtype)
    row = dict(stage=name, kernel_ms={}, eager_ms={})
    warmup = min(3, reps - 1)
    for label, core in cores.items():
        row["eager_ms"][label] = {
            mode: eager_ms(lambda c=core, f=f: f(c), device, reps=reps, warmup=warmup)
            for mode, f in (("fwd", fwd), ("fwd_bwd", fwd_bwd))}
    if device.type == "cuda":
        t_fwd, how = kernel_ms(lambda: fwd(cores["triton"]), device, reps=reps)
        t_both, _ = kernel_ms(lambda: fwd_bwd(cores["triton"]), device, reps=reps)
    else:  # no kernel time to separate from the host's on CPU
        t_fwd, t_both, how = *row["eager_ms"]["triton"].values(), "wall"
    row["kernel_ms"] = dict(fwd=t_fwd, fwd_bwd=t_both, method=how)
    one = batch * side * side * channels * torch.empty((), dtype=dtype).element_size()
    row["floor_ms"] = dict(fwd=4 * one / bandwidth * 1e3, fwd_bwd=12 * one / bandwidth * 1e3)
    row["floor_x"] = {k: row["kernel_ms"][k] / row["floor_ms"][k] for k in ("fwd", "fwd_bwd")}
    row["layer_ms"] = time_layers(stage, batch, device, layers[name], reps)
    return row


def verdicts(timings: list[dict], out_dir) -> list[dict]:
    """Verdicts (b) and (c) from the stage timings."""
    record = Verdicts(out_dir)
    ok_b = all(r["layer_ms"]["bra"] <= r["layer_ms"]["window7x7"] for r in timings)
    record.add("b", "BRA layer fwd+bwd <= 7x7 window attention, each BiFormer-S stage", ok_b,
               "; ".join(f"{r['stage']} {r['layer_ms']['bra']:.3f} vs "
                         f"{r['layer_ms']['window7x7']:.3f} ms" for r in timings))
    ok_c = all(r["floor_x"]["fwd"] <= FLOOR_FACTOR and r["floor_x"]["fwd_bwd"] <= FLOOR_FACTOR
               for r in timings)
    record.add("c", f"attention core kernel time within {FLOOR_FACTOR:g}x of its memory floor",
               ok_c, "; ".join(
                   f"{r['stage']} fwd {r['kernel_ms']['fwd'] * 1e3:.0f} us = "
                   f"{r['floor_x']['fwd']:.2f}x, fwd+bwd {r['kernel_ms']['fwd_bwd'] * 1e3:.0f} "
                   f"us = {r['floor_x']['fwd_bwd']:.2f}x (as called "
                   f"{r['eager_ms']['triton']['fwd'] * 1e3:.0f} / "
                   f"{r['eager_ms']['triton']['fwd_bwd'] * 1e3:.0f} us, "
                   f"{r['kernel_ms']['method']})" for r in timings))
    return record.rows


def format_report(accuracy: list[dict], determinism: dict, timings: list[dict]) -> str:
    """Human-readable tables of the results."""
    lines = ["accuracy: max error vs fp64, kernel [2x plain PyTorch, same dtype]"]
    lines.append(f"  {'stage':8s} {'soft':5s} {'dtype':9s}" + "".join(f"{k:>22s}" for k in KEYS))
    for row in accuracy:
        cells = "".join(f"{row['kernel'][k]:10.2e} [{2 * row['plain'][k]:8.1e}]" if k in
                        row["kernel"] else f"{'-':>22s}" for k in KEYS)
        lines.append(f"  {row['stage']:8s} {str(row['soft']):5s} {row['dtype']:9s}{cells}  "
                     f"{'ok' if row['passed'] else 'FAIL'}")
    lines.append("determinism (bit-identical outputs and gradients over the repetitions): "
                 + ", ".join(f"{k} {'yes' if v else 'NO'}" for k, v in determinism.items()))
    if timings:
        lines.append("attention core, ms: as called (eager) fwd / fwd+bwd; triton kernel time")
        for r in timings:
            cells = "  ".join(f"{k} {v['fwd']:.3f} / {v['fwd_bwd']:.3f}"
                              for k, v in r["eager_ms"].items())
            lines.append(f"  {r['stage']:8s} {cells}  | kernel {r['kernel_ms']['fwd']:.3f} / "
                         f"{r['kernel_ms']['fwd_bwd']:.3f} ({r['kernel_ms']['method']}), floor "
                         f"{r['floor_ms']['fwd']:.3f} / {r['floor_ms']['fwd_bwd']:.3f}")
        lines.append("layer fwd+bwd (projections, LePE; bf16 autocast), ms")
        for r in timings:
            lines.append(f"  {r['stage']:8s} bra {r['layer_ms']['bra']:.3f}  window7x7 "
                         f"{r['layer_ms']['window7x7']:.3f}")
    return "\n".join(lines)


def _setup(args) -> tuple | None:
    if args.smoke_cpu:
        if os.environ.get("TRITON_INTERPRET") != "1":
            print("triton_gpu_check: --smoke-cpu needs TRITON_INTERPRET=1", file=sys.stderr)
            return None
        args.batch = args.check_batch = args.reps = 1
        args.determinism_reps = 2
        return torch.device("cpu"), [torch.float32], torch.float32, SMOKE_STAGES
    if not torch.cuda.is_available():
        print("triton_gpu_check: no CUDA GPU found; this check validates and times the compiled "
              "Triton kernels and must run on a GPU machine (the CPU tests cover the "
              "interpreter)", file=sys.stderr)
        return None
    return (torch.device("cuda"), [torch.bfloat16, torch.float16], torch.bfloat16,
            BIFORMER_S_STAGES)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    setup = _setup(args)
    if setup is None:
        return 2
    device, dtypes, dtype, stages = setup
    t0 = time.perf_counter()
    torch.manual_seed(0)
    accuracy = check_accuracy(device, dtypes, args.check_batch, stages)
    determinism = check_determinism(device, dtype, args.batch, stages, args.determinism_reps)
    passed = all(r["passed"] for r in accuracy) and all(determinism.values())
    print(format_report(accuracy, determinism, []), flush=True)
    print(f"accuracy and determinism: {'PASS' if passed else 'FAIL'}", flush=True)
    bandwidth = copy_bandwidth(device)
    layers = _layers(stages, device, args.smoke_cpu)
    timings = [time_stage(s, args.batch, device, dtype, bandwidth, layers, args.reps)
               for s in stages]
    rows = verdicts(timings, args.verdicts)
    print(format_report([], {}, timings))
    print(f"copy bandwidth {bandwidth / 1e12:.2f} TB/s; total {time.perf_counter() - t0:.0f} s")
    if args.out is not None:
        import triton

        report = dict(
            device=torch.cuda.get_device_name() if device.type == "cuda" else "cpu (smoke)",
            torch=torch.__version__, triton=triton.__version__, dtype=str(dtype),
            batch=args.batch, check_batch=args.check_batch, reps=args.reps,
            copy_bandwidth_bytes_per_s=bandwidth, accuracy=accuracy, determinism=determinism,
            timings=timings, verdicts=rows, passed=passed,
        )
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2))
        print(f"wrote {args.out}")
    met = all(r["met"] for r in rows)
    return 0 if passed and (met or not args.strict) else 1


if __name__ == "__main__":
    raise SystemExit(main())
