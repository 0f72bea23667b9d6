"""The end of the GPU check: step statuses, the four verdict lines, the correctness line.

    python benchmarks/gpu/summary.py OUT

Reads ``OUT/steps.txt`` (``name kind status seconds limit`` per step, written by
``gpu_check.sh``) and ``OUT/verdicts.txt``; a verdict whose step did not get to it is printed as
NOT MEASURED with that step's status. Exit status: 0 every correctness step passed, 1 one failed,
4 one timed out and none failed.
"""

from __future__ import annotations

import sys
from pathlib import Path

# verdict tag -> (what, the step that measures it)
EXPECTED = {
    "a": ("BiFormer-S training img/s compiled >= Swin-S compiled", "model_check"),
    "b": ("BRA layer fwd+bwd <= 7x7 window attention, each BiFormer-S stage", "kernel_check"),
    "c": ("attention core kernel time within 3x of its memory floor", "kernel_check"),
    "d": ("BiFormer-S training step peak memory, triton vs reference backend", "model_check"),
}


def read_steps(out: Path) -> list[dict]:
    rows = []
    path = out / "steps.txt"
    for line in path.read_text().splitlines() if path.exists() else []:
        name, kind, status, seconds, limit = line.split()
        rows.append(dict(name=name, kind=kind, status=status, seconds=int(seconds),
                         limit=int(limit)))
    return rows


def read_verdicts(out: Path) -> dict[str, str]:
    path = out / "verdicts.txt"
    lines = path.read_text().splitlines() if path.exists() else []
    return {line[1:line.index(")")]: line for line in lines if line.startswith("(")}


def correctness(steps: list[dict]) -> tuple[str, int]:
    """The correctness line and the exit status."""
    checks = [s for s in steps if s["kind"] == "correctness"]
    failed = [s["name"] for s in checks if s["status"] == "FAIL"]
    timed_out = [s["name"] for s in checks if s["status"] == "TIMEOUT"]
    if failed:
        return f"correctness: FAIL ({', '.join(failed)})", 1
    if timed_out:
        return f"correctness: TIMEOUT ({', '.join(timed_out)}; nothing failed)", 4
    if not checks:
        return "correctness: NOT RUN", 4
    return "correctness: PASS", 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    out = Path(argv[0])
    steps = read_steps(out)
    verdicts = read_verdicts(out)
    status = {s["name"]: s["status"] for s in steps}
    print("=== summary ===")
    for s in steps:
        print(f"  {s['name']:13s} {s['kind']:12s} {s['status']:8s} {s['seconds']:4d}s "
              f"(limit {s['limit']}s)")
    print(f"  total {sum(s['seconds'] for s in steps)}s")
    for tag, (what, producer) in EXPECTED.items():
        line = verdicts.get(tag)
        if line is None:
            line = f"({tag}) {what}: NOT MEASURED ({producer} {status.get(producer, 'not run')})"
        print(line)
    line, code = correctness(steps)
    print(f"{line}; results in {out}/")
    return code


if __name__ == "__main__":
    raise SystemExit(main())
