"""Detection and segmentation step times and peak memory on the CPU, at the paper's sizes.

Each case runs in a fresh subprocess that reports its forward (eval) time, one training step
(forward + backward + SGD update) and its peak resident memory (``ru_maxrss``). Detection runs
one 800x1333 image (padded to 800x1344 by torchvision) with ``n_win=16`` as in the paper;
segmentation a batch of two 512x512 images (UPerNet's pooling BatchNorm needs two in training)
with ``n_win=8`` (the ADE20K setting); ``*_nwin7`` cases keep the
classification ``n_win=7`` (large regions). The ``"auto"`` backend is the memory-bounded
``chunked`` backend on CPU; ``*_reference`` cases force the gather-based reference for
comparison. ``small_test`` is the configuration of the unit tests.

    python benchmarks/dense_step_times.py                      # every case
    python benchmarks/dense_step_times.py --cases frcnn_tiny,seg_upernet_tiny --json out.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

CASES = {
    # name: (task, model, n_win, attention backend, image size, batch)
    "frcnn_tiny": ("fasterrcnn", "biformer_tiny", 16, "auto", (800, 1333), 1),
    "frcnn_tiny_reference": ("fasterrcnn", "biformer_tiny", 16, "reference", (800, 1333), 1),
    "frcnn_small": ("fasterrcnn", "biformer_small", 16, "auto", (800, 1333), 1),
    "retina_small": ("retinanet", "biformer_small", 16, "auto", (800, 1333), 1),
    "frcnn_small_nwin7": ("fasterrcnn", "biformer_small", 7, "auto", (800, 1333), 1),
    "seg_upernet_tiny": ("upernet", "biformer_tiny", 8, "auto", (512, 512), 2),
    "seg_upernet_small": ("upernet", "biformer_small", 8, "auto", (512, 512), 2),
    "small_test": ("fasterrcnn_test", "biformer_tiny", 4, "auto", (128, 128), 2),
}

CHILD = r"""
import json, os, resource, sys, time
os.environ.setdefault("HF_HUB_OFFLINE", "1")
import torch
import biformer
from biformer.detection import fasterrcnn_biformer, retinanet_biformer

task, name, n_win, backend, h, w, batch, threads = sys.argv[1:9]
n_win, h, w, batch = int(n_win), int(h), int(w), int(batch)
torch.set_num_threads(int(threads))
torch.manual_seed(0)
biformer.ops.set_default_backend(backend)
rss = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

def boxes():
    t = torch.tensor([[0.1, 0.1, 0.4, 0.5], [0.5, 0.2, 0.9, 0.7], [0.3, 0.6, 0.6, 0.95]])
    return t * torch.tensor([w, h, w, h])

if task in ("fasterrcnn", "retinanet", "fasterrcnn_test"):
    if task == "fasterrcnn_test":
        model = fasterrcnn_biformer(name, num_classes=3, n_win=n_win,
                                    min_size=h, max_size=w,
                                    backbone_kwargs=dict(depths=(1, 1, 2, 1), out_channels=64),
                                    rpn_batch_size_per_image=64, box_batch_size_per_image=64)
    else:
        build = fasterrcnn_biformer if task == "fasterrcnn" else retinanet_biformer
        # min_size 800, max_size 1333 (torchvision's defaults)
        model = build(name, num_classes=91, n_win=n_win)
    images = [torch.rand(3, h, w) for _ in range(batch)]
    targets = [dict(boxes=boxes(), labels=torch.tensor([1, 2, 1])) for _ in range(batch)]
    def forward_eval():
        return model(images)
    def loss():
        return sum(model(images, targets).values())
else:
    import segmentation_models_pytorch as smp
    model = smp.UPerNet(encoder_name="tu-" + name, encoder_weights=None, classes=150,
                        n_win=n_win, auto_pad=True)
    x = torch.randn(batch, 3, h, w)
    y = torch.randint(0, 150, (batch, h, w))
    def forward_eval():
        return model(x)
    def loss():
        return torch.nn.functional.cross_entropy(model(x), y)

base = rss()
model.eval()
with torch.no_grad():
    t0 = time.perf_counter(); forward_eval(); t1 = time.perf_counter()
    forward_eval(); t2 = time.perf_counter()
fwd_peak = rss()
model.train()
opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-4)
times = []
for _ in range(2):
    t3 = time.perf_counter()
    value = loss(); opt.zero_grad(); value.backward(); opt.step()
    times.append(time.perf_counter() - t3)
print(json.dumps({"fwd_first_s": t1 - t0, "fwd_s": t2 - t1, "train_first_s": times[0],
                  "train_s": times[1], "fwd_peak_gib": fwd_peak / 2**30,
                  "train_peak_gib": rss() / 2**30, "model_gib": base / 2**30,
                  "finite": bool(torch.isfinite(value))}))
"""


def run_case(name: str, threads: int, timeout: float) -> dict:
    task, model, n_win, backend, (h, w), batch = CASES[name]
    cmd = [sys.executable, "-c", CHILD, task, model, str(n_win), backend, str(h), str(w),
           str(batch), str(threads)]
    start = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                              env=dict(os.environ, PYTHONWARNINGS="ignore"))
    except subprocess.TimeoutExpired:
        return {"case": name, "error": f"timed out after {timeout:.0f} s"}
    if proc.returncode != 0:
        tail = (proc.stderr.strip().splitlines() or ["?"])[-1]
        return {"case": name, "error": f"exit {proc.returncode}: {tail[:200]}"}
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    out.update(case=name, task=task, model=model, n_win=n_win, backend=backend,
               size=f"{h}x{w}", batch=batch, wall_s=time.perf_counter() - start)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", default=",".join(CASES),
                        help=f"comma-separated cases among {', '.join(CASES)}")
    parser.add_argument("--threads", type=int, default=torch_threads())
    parser.add_argument("--timeout", type=float, default=1800.0, help="seconds per case")
    parser.add_argument("--json", default=None, help="also write the results here")
    args = parser.parse_args()
    names = [c for c in args.cases.split(",") if c]
    unknown = [c for c in names if c not in CASES]
    if unknown:
        parser.error(f"unknown cases {unknown}; choose among {', '.join(CASES)}")
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"{args.threads} threads, load average {load:.1f} at start")
    header = (f"{'case':<22} {'size':>9} {'n_win':>5} {'backend':>8} {'fwd s':>7} "
              f"{'train s':>8} {'fwd GiB':>8} {'train GiB':>9}")
    print(header)
    results = []
    for name in names:
        r = run_case(name, args.threads, args.timeout)
        results.append(r)
        if "error" in r:
            print(f"{name:<22} error: {r['error']}")
        else:
            print(f"{name:<22} {r['size']:>9} {r['n_win']:>5} {r['backend']:>8} {r['fwd_s']:7.2f} "
                  f"{r['train_s']:8.2f} {r['fwd_peak_gib']:8.2f} {r['train_peak_gib']:9.2f}",
                  flush=True)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump({"threads": args.threads, "load_average": load, "results": results}, f,
                      indent=2)
    return 0 if all("error" not in r for r in results) else 1


def torch_threads() -> int:
    import torch

    return torch.get_num_threads()


if __name__ == "__main__":
    sys.exit(main())
