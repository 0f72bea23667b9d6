"""``biformer plot RUN_DIR``: loss and accuracy curves of a training run, as PNG files.

Reads the per-epoch ``metrics.csv`` that ``biformer train`` writes (columns such as ``epoch``,
``train_loss``, ``val_loss``, ``val_top1``, ``val_top5``, ``ema_val_top1``, ``lr``; any may be
missing or empty) and writes ``loss.png`` (every ``*loss`` column), ``accuracy.png`` (every
``*top1``/``*top5``/``*acc*`` column) and ``lr.png`` (when the learning rate is logged).
"""

from __future__ import annotations

import argparse
import csv
import math
import os
from pathlib import Path

from ..engine.paths import check_output_file
from ..errors import CommandError, InputError, MissingFileError, one_line, require

__all__ = ["METRICS_NAME", "add_arguments", "main", "plot_run", "read_metrics"]

METRICS_NAME = "metrics.csv"


def _number(text: str | None) -> float:
    try:
        return float(text) if text not in (None, "") else math.nan
    except ValueError:
        return math.nan


def read_metrics(path: str | os.PathLike) -> dict[str, list[float]]:
    """The numeric columns of a metrics CSV: ``{column: values}`` (empty cells are NaN).

    Raises ``MissingFileError`` or ``InputError`` (no header, no rows, no numeric column).
    """
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"metrics file not found: {path}")
    try:
        with open(path, newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
    except (UnicodeDecodeError, csv.Error) as err:
        raise InputError(f"{path} is not a readable CSV file ({err})") from None
    if not rows:
        raise InputError(f"{path} has no epochs yet (a header and at least one row are needed)")
    columns: dict[str, list[float]] = {}
    for name in rows[0]:
        if name is None:
            continue
        values = [_number(row.get(name)) for row in rows]
        if any(not math.isnan(v) for v in values):
            columns[name] = values
    if not columns:
        raise InputError(f"{path} has no numeric column to plot")
    return columns


def _groups(columns: dict[str, list[float]]) -> dict[str, list[str]]:
    loss = [c for c in columns if c.endswith("loss")]
    acc = [c for c in columns if c.endswith(("top1", "top5")) or "acc" in c]
    lr = [c for c in columns if c == "lr"]
    return {"loss": loss, "accuracy": acc, "lr": lr}


def plot_run(run_dir: str | os.PathLike, *, out_dir: str | os.PathLike | None = None,
             dpi: int = 100) -> list[Path]:
    """Write the curves of ``run_dir/metrics.csv`` as PNGs in ``out_dir`` (default: run_dir).

    Returns the written files (``loss.png``, ``accuracy.png``, ``lr.png``; a group with no
    column in the CSV is skipped). x axis: the ``epoch`` column, else the row number.
    """
    matplotlib = require("matplotlib", "viz", "plotting training curves")
    matplotlib.use("Agg", force=False)
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise MissingFileError(f"run directory not found: {run_dir}")
    columns = read_metrics(run_dir / METRICS_NAME)
    n = len(next(iter(columns.values())))
    epochs = columns.pop("epoch", None) or [float(i + 1) for i in range(n)]
    if not any(_groups(columns).values()):
        raise InputError(
            f"{run_dir / METRICS_NAME} has no loss, accuracy or lr column "
            f"(columns: {', '.join(columns)})"
        )
    out_dir = Path(out_dir) if out_dir is not None else run_dir
    written = []
    for group, names in _groups(columns).items():
        if not names:
            continue
        path = check_output_file(out_dir / f"{group}.png", suffixes=(".png",))
        fig = Figure(figsize=(6.4, 4.0), dpi=dpi)
        FigureCanvasAgg(fig)
        ax = fig.add_subplot()
        for name in names:
            pts = [(e, v) for e, v in zip(epochs, columns[name], strict=True) if not math.isnan(v)]
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", markersize=3,
                    label=name)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("epoch")
        ax.set_ylabel({"loss": "loss", "accuracy": "accuracy (%)", "lr": "learning rate"}[group])
        if group == "lr":
            ax.set_yscale("log")
        ax.grid(True, alpha=0.3)
        ax.legend()
        ax.set_title(f"{run_dir.name}: {group}")
        fig.tight_layout()
        fig.savefig(path, dpi=dpi)
        written.append(path)
    return written


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", help=f"training output directory (holds {METRICS_NAME})")
    parser.add_argument("--out", default=None, help="folder for the PNGs (default: RUN_DIR)")


def main(args: argparse.Namespace) -> int:
    try:
        written = plot_run(args.run_dir, out_dir=args.out)
    except InputError as err:
        raise CommandError(one_line(err)) from None
    except OSError as err:
        raise CommandError(f"cannot write the curves: {err.strerror or err}") from None
    for path in written:
        print(f"wrote {path}")
    return 0
