"""Runtimes: one Runner per backend (looked up by name), the comparator, timing, stats, benchmarks.

Backends register on first use of the registry helpers; optional packages import lazily.
"""

from torchship.runtimes.base import (
    RUNNERS,
    Runner,
    available_runners,
    default_runtime_for,
    get_runner,
    require_available,
)
from torchship.runtimes.bench import (
    BenchConfig,
    BenchDocument,
    BenchResult,
    bench_document,
    bench_many,
    bench_runner,
    load_bench_document,
)
from torchship.runtimes.compare import compare_runs
from torchship.runtimes.stats import HIGH_CV, Stats

__all__ = [
    "Runner",
    "RUNNERS",
    "get_runner",
    "available_runners",
    "require_available",
    "default_runtime_for",
    "Stats",
    "HIGH_CV",
    "BenchConfig",
    "BenchResult",
    "BenchDocument",
    "bench_runner",
    "bench_many",
    "bench_document",
    "load_bench_document",
    "compare_runs",
]
