"""CPU benchmark of BRA in ultralytics YOLO models (prints numbers; no assertions).

    python benchmarks/yolo_bra.py                 # all three parts (the demo takes minutes)
    python benchmarks/yolo_bra.py --skip-demo     # layer times and training-step memory only

1. The ``biformer yolo-demo`` table (yolo11n vs yolo11n-bra trained on the embedded digits).
2. Forward time of every BRA layer as placed in the shipped yolo11n models at 640x640 (its
   input map, batch 1 and 16), on the default backend (``auto``: chunked on CPU) and on the
   ``reference`` backend, the gather of the copied module people use today.
3. Peak memory and time of one training step (forward, ultralytics' detection loss, backward;
   batch 2) at 640 and 1280 for both backends: yolo11n-bra, yolo11n-c3k2-bra, and yolo11n
   with BRA on its P3 output (stride 8, where the copied module runs out of memory). Each case
   runs in a fresh process; memory is the growth of its peak resident set over the step.
"""

from __future__ import annotations

import argparse
import copy
import functools
import json
import os
import subprocess
import sys
import tempfile
import time

import torch

BACKENDS = ("auto", "reference")
MODELS = ("yolo11n-bra", "yolo11n-c3k2-bra", "yolo11n-bra-p3")


def _offline() -> None:
    from biformer.integrations.ultralytics.offline import go_offline

    default = os.path.join(tempfile.gettempdir(), "biformer-yolo-bench-config")
    go_offline(os.environ.get("YOLO_CONFIG_DIR") or default)  # before ultralytics is imported


def _p3_dict() -> dict:
    """yolo11n with a BRA layer after its P3 output (row 16): rows 17+ shift by one."""
    from ultralytics.nn.tasks import yaml_model_load

    d = copy.deepcopy(yaml_model_load("yolo11n.yaml"))
    head = d["head"]
    p3 = 16 - len(d["backbone"])  # position of row 16 in the head
    head.insert(p3 + 1, [-1, 1, "BRA", []])
    head[-1][0] = [17, 20, 23]  # Detect reads P3 after BRA; the other sources are below 17
    return d


def build(name: str):
    """The detection model (``ultralytics.nn.tasks.DetectionModel``) of a benchmark case."""
    from ultralytics.nn.tasks import DetectionModel

    from biformer.integrations.ultralytics import model_yaml, register

    register()
    cfg = _p3_dict() if name == "yolo11n-bra-p3" else model_yaml(name)
    return DetectionModel(cfg, verbose=False)


def layer_inputs(model, size: int) -> list[tuple[str, tuple[int, ...]]]:
    """``(module name, input shape)`` of every BRA layer for a ``[1, 3, size, size]`` image."""
    from biformer.integrations.ultralytics import BRA

    seen, handles = [], []
    for name, module in model.named_modules():
        if isinstance(module, BRA):
            hook = (lambda n: lambda m, args: seen.append((n, tuple(args[0].shape))))(name)
            handles.append(module.register_forward_pre_hook(hook))
    with torch.no_grad():
        model.eval()(torch.zeros(1, 3, size, size))
    for h in handles:
        h.remove()
    return seen


def layer_times(steps: int = 20) -> list[dict]:
    """Median forward ms of each BRA layer of the shipped yolo11n models, per backend."""
    from biformer.benchmarking.measure import median_ms, time_steps
    from biformer.ops import use_backend

    rows = []
    for model_name in MODELS[:2]:
        model = build(model_name)
        for name, shape in layer_inputs(model, 640):
            layer = model.get_submodule(name).eval()
            for batch in (1, 16):
                x = torch.randn(batch, *shape[1:])
                row = {"model": model_name, "layer": name, "input": [batch, *shape[1:]]}
                for backend in BACKENDS:
                    with use_backend(backend), torch.no_grad():
                        times = time_steps(functools.partial(layer, x), steps=steps, warmup=2,
                                           device="cpu")
                    row[backend] = median_ms(times)
                rows.append(row)
    return rows


def _batch(size: int, images: int = 2) -> dict:
    gen = torch.Generator().manual_seed(0)
    boxes = 4 * images
    xy = torch.rand(boxes, 2, generator=gen) * 0.6 + 0.2
    wh = torch.rand(boxes, 2, generator=gen) * 0.2 + 0.05
    return {"img": torch.rand(images, 3, size, size, generator=gen),
            "cls": torch.randint(0, 80, (boxes, 1), generator=gen).float(),
            "bboxes": torch.cat([xy, wh], 1),
            "batch_idx": torch.arange(images).repeat_interleave(4).float()}  # sorted by image


def train_step_child(spec: dict) -> dict:
    """One measured training step (run in a fresh process): peak MiB and seconds."""
    from ultralytics.cfg import get_cfg

    from biformer.benchmarking.measure import measure_peak
    from biformer.ops import use_backend

    model = build(spec["model"]).train()
    model.args = get_cfg()
    small, batch = _batch(64), _batch(spec["size"])

    def step(b: dict) -> None:
        model.zero_grad(set_to_none=True)
        loss, _ = model.loss(b)
        loss.sum().backward()

    with use_backend(spec["backend"]):
        step(small)  # builds the loss and warms every kernel at a small size
        start = time.perf_counter()
        reading = measure_peak(lambda: step(batch), device="cpu")
        seconds = time.perf_counter() - start
    return {**spec, "peak_mib": reading.mib, "seconds": seconds}


def train_steps() -> list[dict]:
    """Every (model, size, backend) training step, each in its own process."""
    rows = []
    for model in MODELS:
        for size in (640, 1280):
            for backend in BACKENDS:
                spec = {"model": model, "size": size, "backend": backend}
                done = subprocess.run([sys.executable, __file__, "--child", json.dumps(spec)],
                                      capture_output=True, text=True, timeout=1800)
                if done.returncode:
                    tail = (done.stderr.strip().splitlines() or ["?"])[-1]
                    rows.append({**spec, "peak_mib": None, "seconds": None, "error": tail})
                else:
                    rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
                print(_step_line(rows[-1]), flush=True)
    return rows


def _step_line(r: dict) -> str:
    if r.get("peak_mib") is None:
        return f"| {r['model']} | {r['size']} | {r['backend']} | failed: {r.get('error')} | |"
    return (f"| {r['model']} | {r['size']} | {r['backend']} | {r['peak_mib'] / 1024:.2f} | "
            f"{r['seconds']:.2f} |")


def demo_table(out: str) -> str:
    from biformer.integrations.ultralytics.demo import DemoSettings, format_table, run_demo

    return format_table(run_demo(DemoSettings(out=out)))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--skip-demo", action="store_true", help="skip the demo table")
    parser.add_argument("--demo-out", default="runs/yolo-bench-demo", help="demo output folder")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    torch.set_num_threads(os.cpu_count() or 1)
    if args.child:
        _offline()
        print(json.dumps(train_step_child(json.loads(args.child))))
        return 0
    if args.skip_demo:
        _offline()
    else:
        print(demo_table(args.demo_out), flush=True)
    import ultralytics

    print(f"\ntorch {torch.__version__}, ultralytics {ultralytics.__version__}, "
          f"{torch.get_num_threads()} threads")
    print("\n| model | BRA layer | input | auto ms | reference ms |\n|---|---|---|---|---|")
    for r in layer_times():
        print(f"| {r['model']} | {r['layer']} | {'x'.join(map(str, r['input']))} | "
              f"{r['auto']:.2f} | {r['reference']:.2f} |", flush=True)
    print("\n| model | image | backend | train-step peak GiB | step s |\n|---|---|---|---|---|")
    train_steps()
    return 0


if __name__ == "__main__":
    sys.exit(main())
