"""What a training run writes besides checkpoints: per-epoch CSV, TensorBoard, summary.json.

Only rank 0 creates a :class:`RunLog` with ``enabled=True``; other ranks get a silent one.
"""

from __future__ import annotations

import csv
import io
import json
import os
import sys
from typing import Any

from ..checkpoint.files import atomic_write

__all__ = ["RunLog", "format_duration", "progress_bar"]

CSV_NAME = "metrics.csv"
SUMMARY_NAME = "summary.json"
TB_DIR = "tb"


def format_duration(seconds: float) -> str:
    """``3725.2`` -> ``"1h02m05s"``; ``75`` -> ``"1m15s"``; ``4.2`` -> ``"4.2s"``."""
    if seconds < 60:
        return f"{seconds:.1f}s"
    s = int(round(seconds))
    h, rem = divmod(s, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s"


def _write_text_atomic(path: str, text: str) -> None:
    atomic_write(path, lambda f: f.write(text.encode("utf-8")))


class RunLog:
    """Per-epoch metrics (``metrics.csv``, TensorBoard under ``tb/``) and ``summary.json``.

    Args:
        out_dir: the run's output directory.
        enabled: False on ranks other than 0 (every method is then a no-op).
        tensorboard: write TensorBoard events when the ``tensorboard`` package is installed.
        resumed_at: on resume, the update count the checkpoint reached; TensorBoard drops the
            interrupted run's events logged after it (steps ``> resumed_at``), so that curves do
            not fold back, and keeps those of the saved progress (step ``resumed_at`` included).
    """

    def __init__(self, out_dir: str, *, enabled: bool, tensorboard: bool = True,
                 resumed_at: int | None = None):
        self.out_dir = out_dir
        self.enabled = enabled
        self.writer = None
        if not enabled:
            return
        os.makedirs(out_dir, exist_ok=True)
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:  # tensorboard is optional (extra "log")
                SummaryWriter = None  # noqa: N806
            if SummaryWriter is not None:
                purge = None if resumed_at is None else resumed_at + 1
                self.writer = SummaryWriter(os.path.join(out_dir, TB_DIR), purge_step=purge)

    def write_history(self, history: list[dict[str, Any]]) -> None:
        """Rewrite ``metrics.csv`` from the whole history (one row per finished epoch)."""
        if not self.enabled:
            return
        columns: list[str] = []
        for row in history:
            columns += [k for k in row if k not in columns]
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=columns)
        writer.writeheader()
        for row in history:
            writer.writerow({k: _fmt(row.get(k)) for k in columns})
        _write_text_atomic(os.path.join(self.out_dir, CSV_NAME), buf.getvalue())

    def scalars(self, values: dict[str, float], step: int) -> None:
        """TensorBoard scalars at ``step`` (global optimizer update)."""
        if self.writer is not None:
            for key, value in values.items():
                if value is not None:
                    self.writer.add_scalar(key, value, step)

    def write_summary(self, summary: dict[str, Any]) -> None:
        if self.enabled:
            text = json.dumps(summary, indent=2, sort_keys=False, default=str) + "\n"
            _write_text_atomic(os.path.join(self.out_dir, SUMMARY_NAME), text)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.flush()
            self.writer.close()
            self.writer = None


def _fmt(value: Any) -> Any:
    if isinstance(value, float):
        return f"{value:.6g}"
    return "" if value is None else value


def progress_bar(total: int, *, desc: str, enabled: bool, initial: int = 0):
    """A tqdm bar on stderr: shown on rank 0 when stderr is a terminal, silent otherwise."""
    from tqdm.auto import tqdm

    return tqdm(
        total=total,
        initial=initial,
        desc=desc,
        unit="batch",
        leave=False,
        dynamic_ncols=True,
        file=sys.stderr,
        disable=not (enabled and sys.stderr.isatty()),
    )
