"""GPU check, whole models: verdicts (a) and (d) and a profile of one BiFormer-S training step.

(d) peak memory of one eager BiFormer-S training step on the default (Triton) backend vs the
    reference backend (bf16 autocast, batch ``--batch``);
(a) BiFormer-S training img/s under ``torch.compile`` vs timm Swin-S compiled, same card, same
    run (bf16 autocast, batch 128, train mode; the compiling warm-up steps are not timed and no
    eager variant is run);
profile: the top kernels by GPU time of one compiled BiFormer-S training step, as a table in
    ``OUT/profile_biformer_small.txt``.

Training step: forward, cross-entropy, backward, AdamW step. ``--smoke-cpu`` runs the same code
on CPU (eager, tiny batch and image, no verdict on speed) to check the script.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from common import Verdicts, sync  # noqa: E402

import biformer  # noqa: E402, F401  (registers the models with timm)

BIFORMER, SWIN = "biformer_small", "swin_small_patch4_window7_224"


class Trainer:
    """One model's training step on fixed random data."""

    def __init__(self, name: str, batch: int, img: int, device, compiled: bool):
        import timm

        kw = dict(img_size=img) if name.startswith("swin") else {}
        self.model = timm.create_model(name, num_classes=1000, **kw).to(device).train()
        self.model = self.model.to(memory_format=torch.channels_last)
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=1e-4)
        self.forward = torch.compile(self.model) if compiled else self.model
        self.x = torch.randn(batch, 3, img, img, device=device).to(
            memory_format=torch.channels_last)
        self.y = torch.randint(0, 1000, (batch,), device=device)
        self.device = torch.device(device)

    def step(self) -> None:
        with torch.autocast(self.device.type, dtype=torch.bfloat16,
                            enabled=self.device.type == "cuda"):
            loss = F.cross_entropy(self.forward(self.x), self.y)
        loss.backward()
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)

    def images_per_s(self, warmup: int, steps: int) -> tuple[float, float]:
        """(img/s over ``steps`` timed steps, seconds of the ``warmup`` steps)."""
        t0 = time.perf_counter()
        for _ in range(warmup):
            self.step()
        sync(self.device)
        warm = time.perf_counter() - t0
        t0 = time.perf_counter()
        for _ in range(steps):
            self.step()
        sync(self.device)
        return self.x.shape[0] * steps / (time.perf_counter() - t0), warm


def peak_mib(trainer: Trainer) -> float | None:
    """Peak memory above the steady state of one training step (after one warm-up step)."""
    trainer.step()
    if trainer.device.type != "cuda":
        return None
    sync(trainer.device)
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    trainer.step()
    sync(trainer.device)
    return (torch.cuda.max_memory_allocated() - before) / 2**20


def profile_step(trainer: Trainer, path: Path, rows: int = 25) -> str:
    """Profile one training step; write the table of top kernels by device time to ``path``."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU]
    if trainer.device.type == "cuda":
        activities.append(ProfilerActivity.CUDA)
    with profile(activities=activities) as prof:
        trainer.step()
        sync(trainer.device)
    key = "self_device_time_total" if trainer.device.type == "cuda" else "self_cpu_time_total"
    table = prof.key_averages().table(sort_by=key, row_limit=rows, max_name_column_width=70)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(table)
    return table


def _release(device) -> None:
    """Free cached blocks and restart the peak counter between models."""
    if device == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def check_memory(args, record: Verdicts, device) -> None:
    from biformer import ops

    if device != "cuda":
        print(f"(d) peak memory: not measured on {device}")
        return
    peaks = {}
    for backend in ("auto", "reference"):
        with ops.use_backend(backend):
            peaks[backend] = peak_mib(Trainer(args.biformer, args.batch, args.img, device, False))
        _release(device)
    record.add("d", "BiFormer-S training step peak memory, default (triton) vs reference "
               "backend, eager", peaks["auto"] < peaks["reference"],
               f"{peaks['auto']:.0f} vs {peaks['reference']:.0f} MiB "
               f"({peaks['auto'] / peaks['reference']:.2f}x)")


def check_throughput(args, record: Verdicts, device, out_dir: Path) -> None:
    rates = {}
    for name in (args.biformer, args.swin):
        _release(device)
        trainer = Trainer(name, args.batch, args.img, device, compiled=not args.smoke_cpu)
        rates[name], warm = trainer.images_per_s(args.warmup, args.steps)
        mib = torch.cuda.max_memory_allocated() / 2**20 if device == "cuda" else float("nan")
        print(f"{name}: {rates[name]:.1f} img/s train (warm-up incl. compile {warm:.0f} s, "
              f"peak allocated {mib:.0f} MiB)", flush=True)
        if name == args.biformer:
            table = profile_step(trainer, out_dir / f"profile_{name}.txt")
            print("top kernels of one compiled BiFormer-S training step:")
            print("\n".join(table.splitlines()[:18]), flush=True)
        del trainer
    record.add("a", "BiFormer-S training img/s compiled >= Swin-S compiled (bf16, batch "
               f"{args.batch})", rates[args.biformer] >= rates[args.swin],
               f"{rates[args.biformer]:.0f} vs {rates[args.swin]:.0f} img/s "
               f"({rates[args.biformer] / rates[args.swin]:.2f}x, {args.biformer} vs {args.swin})")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for verdicts, profile")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--img", type=int, default=224)
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps (compile)")
    parser.add_argument("--steps", type=int, default=10, help="timed steps")
    parser.add_argument("--biformer", default=BIFORMER, help="the BiFormer model (timm name)")
    parser.add_argument("--swin", default=SWIN, help="the Swin baseline (timm name)")
    parser.add_argument("--smoke-cpu", action="store_true", help="eager, batch 1, on CPU")
    args = parser.parse_args(argv)
    if args.smoke_cpu:
        device = "cpu"
        args.batch, args.warmup, args.steps = 1, 0, 1
    elif torch.cuda.is_available():
        device = "cuda"
    else:
        print("model_check: no CUDA GPU found", file=sys.stderr)
        return 2
    torch.manual_seed(0)
    record = Verdicts(args.out)
    check_memory(args, record, device)
    check_throughput(args, record, device, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
