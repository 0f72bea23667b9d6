"""Benchmark suites behind ``biformer bench`` and the scripts in ``benchmarks/``."""

from .environment import describe_environment
from .measure import MemoryReading, measure_peak, median_ms, time_steps
from .model_suite import DEFAULT_MODELS, run_model_suite
from .op_suite import SHAPES, OpShape, run_op_suite
from .report import format_table, model_table, op_table, plot_results, write_json
from .settings import DTYPES, BenchSettings

__all__ = [
    "DEFAULT_MODELS",
    "DTYPES",
    "SHAPES",
    "BenchSettings",
    "MemoryReading",
    "OpShape",
    "describe_environment",
    "format_table",
    "measure_peak",
    "median_ms",
    "model_table",
    "op_table",
    "plot_results",
    "run_model_suite",
    "run_op_suite",
    "time_steps",
    "write_json",
]
