"""Benchmark output: aligned text tables, the JSON record and PNG bar charts."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

__all__ = ["format_table", "model_table", "op_table", "plot_results", "write_json"]


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        if math.isnan(value):
            return "-"
        return f"{value:.1f}" if abs(value) >= 100 else f"{value:.2f}"
    return str(value)


def format_table(headers: list[str], rows: list[list[Any]]) -> str:
    """Columns padded to their widest cell; numbers right-aligned, text left-aligned."""
    cells = [[_cell(v) for v in row] for row in rows]
    numeric = [
        all(isinstance(row[i], (int, float)) or row[i] is None for row in rows) and bool(rows)
        for i in range(len(headers))
    ]
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(headers)]

    def line(values: list[str]) -> str:
        parts = [
            v.rjust(w) if num else v.ljust(w) for v, w, num in zip(values, widths, numeric, strict=True)
        ]
        return "  ".join(parts).rstrip()

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([line(headers), rule] + [line(r) for r in cells])


def _notes(statuses: list[str]) -> str:
    seen = []
    for s in statuses:
        if s != "ok" and s not in seen:
            seen.append(s)
    return " | ".join(seen)


def op_table(rows: list[dict]) -> str:
    """One line per (shape, method, compiled): fwd and fwd+bwd time and peak memory."""
    grouped: dict[tuple, dict[str, dict]] = {}
    for r in rows:
        grouped.setdefault((r["shape"], r["method"], r["compiled"]), {})[r["mode"]] = r
    lines = []
    for (shape, method, compiled), modes in grouped.items():
        fwd, both = modes.get("fwd", {}), modes.get("fwd+bwd", {})
        any_row = fwd or both
        lines.append([
            shape, any_row.get("batch"), method + (" (compiled)" if compiled else ""),
            fwd.get("time_ms"), both.get("time_ms"), fwd.get("peak_mib"), both.get("peak_mib"),
            _notes([fwd.get("status", "ok"), both.get("status", "ok")]),
        ])
    headers = ["shape", "batch", "method", "fwd ms", "fwd+bwd ms", "fwd MiB", "fwd+bwd MiB",
               "notes"]
    return format_table(headers, lines)


def model_table(rows: list[dict]) -> str:
    """One line per (model, backend, compiled): train/inference img/s and peak memory."""
    lines = [
        [r["model"], r["backend"], r["compiled"], r["batch"], r["train_img_s"],
         r["infer_img_s"], r["train_peak_mib"], r["infer_peak_mib"], _notes([r["status"]])]
        for r in rows
    ]
    headers = ["model", "backend", "compiled", "batch", "train img/s", "infer img/s",
               "train MiB", "infer MiB", "notes"]
    return format_table(headers, lines)


def write_json(path: str | Path, record: dict[str, Any]) -> Path:
    """Write ``record`` (environment, settings, results) as indented JSON; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=2, sort_keys=False) + "\n", encoding="utf-8")
    return path


def _bars(ax, groups: list[str], series: dict[str, list[float | None]], ylabel: str) -> None:
    n = max(len(series), 1)
    width = 0.8 / n
    for i, (label, values) in enumerate(series.items()):
        xs = [g + (i - (n - 1) / 2) * width for g in range(len(groups))]
        ys = [v if v is not None else 0.0 for v in values]
        ax.bar(xs, ys, width=width, label=label)
    ax.set_xticks(range(len(groups)))
    ax.set_xticklabels(groups, rotation=30, ha="right", fontsize=8)
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=7)


def plot_results(record: dict[str, Any], out_dir: str | Path) -> list[Path]:
    """Bar charts (PNG, matplotlib Agg) of the op and model results; returns the files written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    device = record.get("settings", {}).get("device", "")
    op_rows = record.get("results", {}).get("op", [])
    if op_rows:
        shapes = list(dict.fromkeys(r["shape"] for r in op_rows))
        for key, ylabel, fname in (("time_ms", "ms (median)", "op_time.png"),
                                   ("peak_mib", "peak MiB", "op_memory.png")):
            fig, axes = plt.subplots(1, len(shapes), figsize=(4.5 * len(shapes), 4),
                                     squeeze=False)
            for ax, shape in zip(axes[0], shapes, strict=True):
                rows = [r for r in op_rows if r["shape"] == shape]
                methods = list(dict.fromkeys(
                    r["method"] + (" (compiled)" if r["compiled"] else "") for r in rows))
                series = {}
                for mode in ("fwd", "fwd+bwd"):
                    by_method = {
                        r["method"] + (" (compiled)" if r["compiled"] else ""): r.get(key)
                        for r in rows if r["mode"] == mode
                    }
                    series[mode] = [by_method.get(m) for m in methods]
                _bars(ax, methods, series, ylabel)
                ax.set_title(f"{shape} ({device})", fontsize=9)
            fig.tight_layout()
            fig.savefig(out_dir / fname, dpi=110)
            plt.close(fig)
            written.append(out_dir / fname)
    model_rows = record.get("results", {}).get("model", [])
    if model_rows:
        labels = [
            r["model"] + (f" [{r['backend']}]" if r["backend"] != "auto" else "")
            + (" (compiled)" if r["compiled"] else "")
            for r in model_rows
        ]
        for keys, ylabel, fname in (
            (("train_img_s", "infer_img_s"), "images / s", "model_throughput.png"),
            (("train_peak_mib", "infer_peak_mib"), "peak MiB", "model_memory.png"),
        ):
            fig, ax = plt.subplots(figsize=(max(6, 1.2 * len(labels)), 4))
            series = {k.split("_")[0]: [r.get(k) for r in model_rows] for k in keys}
            _bars(ax, labels, series, ylabel)
            ax.set_title(f"models ({device}, batch {model_rows[0]['batch']})", fontsize=9)
            fig.tight_layout()
            fig.savefig(out_dir / fname, dpi=110)
            plt.close(fig)
            written.append(out_dir / fname)
    return written
