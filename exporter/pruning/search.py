"""Latency-aware pruning ratio: measure candidates through a runtime, not FLOPs.

Each candidate ratio is pruned, exported (ONNX with the fast legacy exporter for `ort-*`, the
eager module for `torch`) and timed with the runtime layer's `bench_runner`. The search bisects
the ratio for the smallest one that meets the target speedup or latency.
"""

from __future__ import annotations

import gc
import logging
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from torchship.errors import CheckFailedError, ConfigError
from torchship.exporter.base import ExportOptions, export_model
from torchship.exporter.pruning.channels import (
    PruneConfig,
    PruneResult,
    check_ratio,
    prune_channels,
    require_prunable_module,
)
from torchship.exporter.pruning.distill import evaluate_accuracy
from torchship.exporter.pruning.importance import IMPORTANCES
from torchship.loaded import LoadedModel
from torchship.runtimes import BenchConfig, bench_runner, get_runner

__all__ = ["SearchRow", "SearchResult", "measure_latency", "search_ratio"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SearchRow:
    ratio: float
    params: int
    macs: int
    latency_ms: float
    speedup: float
    accuracy: float | None  # before recovery (fine-tuning would come after the choice)

    def to_dict(self) -> dict:
        return dict(self.__dict__)


@dataclass(frozen=True)
class SearchResult:
    runtime: str
    batch: int
    baseline_ms: float
    rows: tuple[SearchRow, ...]
    chosen: PruneResult
    chosen_ratio: float

    def to_dict(self) -> dict:
        return {
            "runtime": self.runtime,
            "batch": self.batch,
            "baseline_ms": self.baseline_ms,
            "chosen_ratio": self.chosen_ratio,
            "candidates": [r.to_dict() for r in self.rows],
        }


def measure_latency(
    model: LoadedModel,
    *,
    runtime: str = "ort-cpu",
    batch: int = 8,
    min_time_s: float = 0.3,
    threads: int | None = None,
) -> float:
    """p50 latency (ms) of `model` on `runtime` at `batch`, through the runtime layer."""
    config = BenchConfig(batches=(batch,), warmup=5, min_time_s=min_time_s, threads=threads)
    formats = get_runner(runtime).formats
    with tempfile.TemporaryDirectory(prefix="torchship-prune-") as tmp:
        if any(f.value == "eager" for f in formats):
            artifact = model.eager()
        elif any(f.value == "onnx" for f in formats):
            options = ExportOptions(dynamo=False, validate=False)
            artifact = export_model(model, Path(tmp), formats=["onnx"], options=options)[0]
        else:
            raise ConfigError(f"runtime {runtime!r} runs neither eager modules nor ONNX; use "
                              "torch or ort-cpu for the pruning search")  # fmt: skip
        result = bench_runner(runtime, artifact, config=config, batch=batch)
        gc.collect()
    return float(result.latency_ms["p50"])


def search_ratio(
    model: LoadedModel,
    *,
    target_speedup: float | None = None,
    target_latency_ms: float | None = None,
    runtime: str = "ort-cpu",
    batch: int = 8,
    config: PruneConfig | None = None,
    eval_data: dict[str, np.ndarray] | None = None,
    data: dict[str, np.ndarray] | None = None,
    steps: int = 4,
    max_ratio: float = 0.85,
    min_time_s: float = 0.3,
    progress: Callable[[str], None] | None = None,
) -> SearchResult:
    """Bisect the ratio for the smallest one meeting the target; CheckFailedError if none does.

    `data` feeds importance criteria that need it (taylor), as in `prune_channels`.
    """
    if (target_speedup is None) == (target_latency_ms is None):
        raise ConfigError("give exactly one of --target-speedup and --target-latency-ms")
    if target_speedup is not None and not target_speedup > 1.0:
        raise ConfigError(f"--target-speedup {target_speedup} must be > 1")
    if target_latency_ms is not None and not target_latency_ms > 0:
        raise ConfigError(f"--target-latency-ms {target_latency_ms} must be > 0")
    if batch < 1:
        raise ConfigError(f"--batch {batch}: the batch timed by the search must be >= 1")
    check_ratio(max_ratio, what="maximum search ratio")
    require_prunable_module(model)
    step = progress or (lambda message: None)
    config = config or PruneConfig()
    if IMPORTANCES.get(config.importance_name).needs_data and data is None:
        raise ConfigError(
            f"importance {config.importance_name!r} needs data; pass --train DATA or use l1/l2"
        )
    time_it = lambda m: measure_latency(m, runtime=runtime, batch=batch, min_time_s=min_time_s)  # noqa: E731
    step(f"timing the unpruned model on {runtime}")
    baseline = time_it(model)
    goal_ms = target_latency_ms if target_latency_ms is not None else baseline / target_speedup
    rows: list[SearchRow] = []
    results: dict[float, PruneResult] = {}

    def evaluate(ratio: float) -> SearchRow:
        step(f"pruning at ratio {ratio:.3f} and timing it on {runtime}")
        pruned = prune_channels(model, config=replace(config, ratio=ratio), data=data)
        latency = time_it(pruned.model)
        accuracy = evaluate_accuracy(pruned.model, eval_data) if eval_data else None
        row = SearchRow(
            ratio, pruned.params[1], pruned.macs[1], latency, baseline / latency, accuracy
        )
        rows.append(row)
        results[ratio] = pruned
        return row

    lo, hi, best = 0.0, max_ratio, None
    top = evaluate(hi)
    if top.latency_ms > goal_ms:
        raise CheckFailedError(
            f"no pruning ratio up to {max_ratio} reaches {goal_ms:.3f} ms on {runtime} at batch "
            f"{batch}: ratio {max_ratio} gives {top.latency_ms:.3f} ms ({top.speedup:.2f}x)"
        )
    best = hi
    for _ in range(steps - 1):
        mid = round((lo + hi) / 2, 4)
        if evaluate(mid).latency_ms <= goal_ms:
            hi = best = mid
        else:
            lo = mid
    _warn_if_flat(rows, baseline, runtime)
    rows.sort(key=lambda r: r.ratio)
    return SearchResult(runtime, batch, baseline, tuple(rows), results[best], best)


def _warn_if_flat(rows: list[SearchRow], baseline: float, runtime: str) -> None:
    if all(r.speedup < 1.05 for r in rows):
        log.warning(
            "pruning does not reduce latency on %s (best %.2fx over %d candidates); the runtime "
            "may be bound by something other than channel count at this batch",
            runtime, max(r.speedup for r in rows), len(rows),
        )  # fmt: skip
