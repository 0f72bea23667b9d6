"""``biformer bench`` on tiny settings: runs, prints aligned tables, writes JSON and PNG charts."""

import json
import sys

import pytest
import torch

from biformer import cli
from biformer.benchmarking import BenchSettings, format_table, measure_peak
from biformer.benchmarking.measure import cpu_peak_supported
from biformer.benchmarking.op_suite import SHAPES, _refusal


def _bench(monkeypatch, capsys, *args):
    monkeypatch.setattr(sys, "argv", ["biformer", "bench", *args])
    code = cli.main()
    out, err = capsys.readouterr()
    return code, out, err


def _table(out: str, title: str) -> list[str]:
    lines = out.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(title)) + 1
    end = next((i for i in range(start, len(lines)) if not lines[i].strip()), len(lines))
    return lines[start:end]


def test_bench_runs_both_suites_and_writes_json_and_charts(monkeypatch, capsys, tmp_path):
    json_path, plot_dir = tmp_path / "out" / "bench.json", tmp_path / "charts"
    threads = torch.get_num_threads()
    code, out, err = _bench(
        monkeypatch, capsys, "--suite", "all", "--device", "cpu", "--shapes", "stage3",
        "--backends", "reference,chunked", "--batch", "2", "--steps", "2", "--warmup", "0",
        "--models", "resnet18", "--img-size", "32", "--json", str(json_path),
        "--plot", str(plot_dir), "--threads", "1",  # one thread: immune to a busy machine
    )
    assert code == 0, err

    # the op table: header, rule, one aligned row per method
    table = _table(out, "Operator benchmark")
    header, rule, rows = table[0], table[1], table[2:]
    assert set(rule.replace(" ", "")) == {"-"}
    assert [r.split()[2] for r in rows] == [
        "bra-reference", "bra-chunked", "window7x7-sdpa", "global-sdpa"
    ]
    col = header.index("method")
    assert all(r[col - 2 : col] == "  " and r[col] != " " for r in rows)  # left-aligned column
    right = header.index("fwd+bwd ms") + len("fwd+bwd ms")
    assert all(r[right - 1].isdigit() for r in rows)  # numbers end under the header's end

    record = json.loads(json_path.read_text())
    assert record["machine"]["cpu"] and record["machine"]["cpu_cores"] >= 1
    assert record["versions"]["torch"] == torch.__version__
    assert record["versions"]["timm"]
    assert record["settings"]["device"] == "cpu" and record["settings"]["op"]["batch"] == 2
    assert record["machine"]["torch_threads"] == 1 and torch.get_num_threads() == threads
    ops_rows = record["results"]["op"]
    assert len(ops_rows) == 4 * 2  # methods x (fwd, fwd+bwd)
    for row in ops_rows:
        assert row["status"] == "ok", row
        assert row["time_ms"] > 0 and len(row["times_ms"]) == 2
        assert row["shape"] == "stage3" and row["problem"].startswith("14x14 C256 h8")
    (model,) = record["results"]["model"]
    assert model["model"] == "resnet18" and model["status"] == "ok"
    assert model["train_img_s"] > 0 and model["infer_img_s"] > 0
    assert "resnet18" in "\n".join(_table(out, "Model benchmark"))

    for name in ("op_time.png", "op_memory.png", "model_throughput.png", "model_memory.png"):
        data = (plot_dir / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000


def test_bench_rejects_bad_arguments(monkeypatch, capsys):
    code, _, err = _bench(monkeypatch, capsys, "--suite", "op", "--backends", "nope")
    assert code == 2 and "--backends" in err and "reference" in err
    code, _, err = _bench(monkeypatch, capsys, "--suite", "op", "--shapes", "stage9")
    assert code == 2 and "stage1" in err
    code, _, err = _bench(monkeypatch, capsys, "--suite", "op", "--steps", "0")
    assert code == 2 and "--steps" in err
    if not torch.cuda.is_available():
        code, _, err = _bench(monkeypatch, capsys, "--suite", "op", "--device", "cuda")
        assert code == 2 and "--device cpu" in err


def test_op_suite_explains_skipped_cases():
    settings = BenchSettings(device="cpu")
    why = _refusal(SHAPES["stage1"], "bra-flex", 8, settings, True, max_gib=6.0)
    assert why.startswith("n/a:") and "no CPU backward" in why
    assert _refusal(SHAPES["stage1"], "bra-flex", 8, settings, False, max_gib=6.0) is None
    why = _refusal(SHAPES["hires"], "bra-reference", 1, settings, True, max_gib=1.0)
    assert why.startswith("skipped: needs ~") and "GiB" in why
    assert _refusal(SHAPES["hires"], "bra-chunked", 1, settings, True, max_gib=1.0) is None
    why = _refusal(SHAPES["hires"], "global-sdpa", 1, settings, False, max_gib=1.0)
    assert why.startswith("skipped:") and "50176 tokens" in why


def test_format_table_aligns_columns():
    text = format_table(["name", "ms"], [["a", 1.5], ["longer", 123.456], ["c", None]])
    lines = text.splitlines()
    assert lines[0] == "name       ms"
    assert lines[1] == "------  -----"
    assert lines[2] == "a        1.50"
    assert lines[3] == "longer  123.5"
    assert lines[4] == "c           -"


@pytest.mark.skipif(not cpu_peak_supported(), reason="needs Linux /proc peak-RSS reset")
def test_cpu_peak_memory_sees_tensor_allocations():
    def allocate():
        x = torch.ones(50 * 2**20 // 4 * 4)  # 200 MiB, pages touched
        return float(x[-1])

    reading = measure_peak(allocate, device="cpu")
    assert reading.kind == "cpu peak RSS growth"
    assert 180 < reading.mib < 400
    small = measure_peak(lambda: torch.ones(1000).sum(), device="cpu")
    assert small.mib < 50
