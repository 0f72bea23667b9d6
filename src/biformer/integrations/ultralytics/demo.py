"""``biformer yolo-demo``: a YOLO and its BRA variant trained on embedded digits, side by side.

    biformer yolo-demo                       # yolo11n vs yolo11n-bra, 12 epochs at 128 px
    biformer yolo-demo --model yolov8n-c2f-bra --epochs 30 --out runs/yolo-c2f

Synthesises a detection dataset from scikit-learn's handwritten digits (``data.py``), trains
the plain ultralytics model of the same scale and the BRA model with the same settings through
``YOLO.train`` on the CPU, and prints one table (parameters, GFLOPs at 640, training and
inference images per second, mAP50 and mAP50-95 on the validation images). Everything stays
under ``--out``: the dataset, ultralytics' settings (``ultralytics-config``, so the user's are
untouched), and ultralytics' usual run folders ``baseline/`` and ``bra/`` (weights, curves,
plots). Fully offline (see ``offline.py``).
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict, dataclass
from pathlib import Path

from ...errors import CommandError

__all__ = ["DemoSettings", "DemoRow", "add_arguments", "format_table", "main", "run_demo"]

DEFAULT_MODEL = "yolo11n-bra"


@dataclass(frozen=True)
class DemoSettings:
    """One demo run: the models, the data and the training settings both models share.

    ``optimizer``, ``lr0``, ``warmup_epochs``: AdamW at 0.002 after one warmup epoch. With
    them yolo11n reached mAP50 0.116 in the default 12 epochs; ultralytics' ``"auto"`` choice
    for short runs (AdamW at about 0.0007, three warmup epochs; batch 16) reached 0.063.
    """

    model: str = DEFAULT_MODEL
    out: str = "runs/yolo-demo"
    epochs: int = 12
    imgsz: int = 128
    batch: int = 8
    train_images: int = 320
    val_images: int = 80
    workers: int = 0
    seed: int = 0
    optimizer: str = "AdamW"
    lr0: float = 0.002
    warmup_epochs: float = 1.0

    def check(self) -> None:
        """ValueError naming the setting and the fix."""
        from .configs import parse_name

        parse_name(self.model)
        for name in ("epochs", "batch", "train_images", "val_images"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be at least 1, "
                                 f"got {getattr(self, name)}")
        if self.imgsz < 64 or self.imgsz % 32:
            raise ValueError(f"--imgsz must be a multiple of 32 of at least 64, got {self.imgsz}")
        if self.workers < 0:
            raise ValueError(f"--workers must be 0 or more, got {self.workers}")


@dataclass
class DemoRow:
    """The measured numbers of one trained model."""

    model: str
    params: int
    gflops_640: float
    ultralytics_gflops_640: float
    train_img_s: float
    infer_img_s: float
    map50: float
    map50_95: float
    run_dir: str


def _train_one(cfg: str, label: str, settings: DemoSettings, data: Path) -> DemoRow:
    """Train ``cfg`` with the shared settings and measure it."""
    from ultralytics import YOLO

    from .measure import EpochTimer, gflops, num_params, ultralytics_gflops

    yolo = YOLO(cfg)
    timer = EpochTimer().add_to(yolo)
    metrics = yolo.train(
        data=str(data), epochs=settings.epochs, imgsz=settings.imgsz, batch=settings.batch,
        workers=settings.workers, seed=settings.seed, device="cpu", amp=False, pretrained=False,
        deterministic=True, plots=True, project=str(Path(settings.out).resolve()), name=label,
        exist_ok=True, verbose=False, optimizer=settings.optimizer, lr0=settings.lr0,
        warmup_epochs=settings.warmup_epochs,
    )
    model = yolo.model
    results = metrics.results_dict
    return DemoRow(
        model=Path(cfg).stem, params=num_params(model), gflops_640=gflops(model, 640),
        ultralytics_gflops_640=ultralytics_gflops(model, 640),
        train_img_s=timer.images_per_second,
        infer_img_s=1000.0 / max(metrics.speed["inference"], 1e-9),
        map50=float(results["metrics/mAP50(B)"]), map50_95=float(results["metrics/mAP50-95(B)"]),
        run_dir=str(metrics.save_dir),
    )


def run_demo(settings: DemoSettings) -> list[DemoRow]:
    """Synthesise the data, train the baseline then the BRA model; returns their rows.

    Writes ``<out>/summary.json`` (settings and rows) next to the run folders.
    """
    from .offline import go_offline

    settings.check()
    out = Path(settings.out)
    go_offline(out / "ultralytics-config")
    from .configs import baseline_name, model_yaml
    from .data import DigitsDetection, synthesize_digits
    from .offline import provide_font

    bra_cfg = model_yaml(settings.model)  # registers, or ImportError with the install hint
    provide_font()
    spec = DigitsDetection(train=settings.train_images, val=settings.val_images,
                           size=settings.imgsz, seed=settings.seed)
    data = synthesize_digits(out / "data", spec)
    rows = [_train_one(baseline_name(settings.model), "baseline", settings, data),
            _train_one(bra_cfg, "bra", settings, data)]
    summary = {"settings": asdict(settings), "rows": [asdict(r) for r in rows]}
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return rows


def format_table(rows: list[DemoRow]) -> str:
    """A Markdown table of the rows."""
    lines = ["| model | params | GFLOPs@640 (torch / ultralytics) | train img/s | infer img/s "
             "| mAP50 | mAP50-95 |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(
            f"| {r.model} | {r.params / 1e6:.2f} M | {r.gflops_640:.2f} / "
            f"{r.ultralytics_gflops_640:.2f} | {r.train_img_s:.1f} | {r.infer_img_s:.1f} | "
            f"{r.map50:.3f} | {r.map50_95:.3f} |"
        )
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    d = DemoSettings()
    parser.add_argument("--model", default=d.model,
                        help="BRA model: yolo11n-bra, yolo11n-c3k2-bra, yolov8n-bra, "
                             "yolov8n-c2f-bra, or another scale letter (the baseline is the plain "
                             "ultralytics model of the same scale)")
    parser.add_argument("--out", default=d.out, help="folder for data, runs and summary.json")
    parser.add_argument("--epochs", type=int, default=d.epochs, help="epochs for each model")
    parser.add_argument("--imgsz", type=int, default=d.imgsz,
                        help="canvas and training size in pixels (multiple of 32)")
    parser.add_argument("--batch", type=int, default=d.batch, help="batch size")
    parser.add_argument("--train-images", type=int, default=d.train_images,
                        help="synthetic training images")
    parser.add_argument("--val-images", type=int, default=d.val_images,
                        help="synthetic validation images")
    parser.add_argument("--workers", type=int, default=d.workers, help="dataloader workers")
    parser.add_argument("--seed", type=int, default=d.seed, help="data and training seed")


def main(args: argparse.Namespace) -> int:
    settings = DemoSettings(
        model=args.model, out=args.out, epochs=args.epochs, imgsz=args.imgsz, batch=args.batch,
        train_images=args.train_images, val_images=args.val_images, workers=args.workers,
        seed=args.seed,
    )
    from .offline import go_offline
    from .registration import register

    try:
        settings.check()
        go_offline(Path(settings.out) / "ultralytics-config")  # before ultralytics is imported
        register()
    except (ValueError, ImportError) as err:
        raise CommandError(str(err)) from None
    rows = run_demo(settings)
    print(format_table(rows))
    print(f"runs: {rows[0].run_dir}, {rows[1].run_dir}; summary: {Path(args.out) / 'summary.json'}")
    return 0
