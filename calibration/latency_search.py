"""Latency-aware INT8: search region exclusions by *measured* latency within the accuracy budget.

Why: on ORT's CPU kernels a static INT8 model can run slower than its FP32 source (MobileNetV3:
Q/DQ pairs around HardSigmoid/HardSwish, squeeze-excite gates, narrow convs; docs/design.md,
"INT8 on CPU"). The per-node profile of both sessions (ORT's profiler) says where INT8 time
goes and ranks the region families of `torchship.calibration.regions`; each candidate (a set of
regions kept in FP32) is then timed against FP32 in interleaved rounds, and the fastest one
within the accuracy budget wins. A candidate ships only when a second, confirming measurement
also finds it faster than FP32; otherwise the FP32 model ships, and the report says why.
"""

from __future__ import annotations

import collections
import json
import logging
import re
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from torchship.artifact import Artifact
from torchship.calibration.accuracy import Accuracy
from torchship.calibration.regions import Graph, Region
from torchship.runtimes.interleaved import interleaved_ab

__all__ = [
    "Row",
    "SearchResult",
    "search",
    "measure_ratio",
    "profile_nodes",
    "region_estimates",
    "DEFAULT_TIME_S",
]

log = logging.getLogger(__name__)

DEFAULT_TIME_S = 30.0
#: At most this many region families are measured (the profile's best first).
MAX_REGIONS = 8
#: A step must cut latency by this share to be kept (below it, timing noise decides).
MIN_STEP_GAIN = 0.02
#: The shipped INT8 must be at least this much faster than FP32 in both measurements: the pruned
#: demo's INT8 confirmed at 1.003x once, then timed 0.99x in the ship table (noise, not a gain).
MIN_GAIN_VS_FP32 = 0.05

#: measure(candidate path) -> candidate p50 / FP32 p50 (< 1: faster than FP32)
Measure = Callable[[Path], float]
#: evaluate(excluded node names) -> accuracy of the model quantized without them
Evaluate = Callable[[tuple[str, ...]], Accuracy]
#: build(excluded node names) -> path of the quantized candidate
Build = Callable[[tuple[str, ...]], Path]


@dataclass(frozen=True)
class Row:
    """One measured candidate: what it keeps in FP32 and what that gave."""

    label: str
    regions: tuple[str, ...]
    excluded: int
    latency_ratio: float | None
    drop: float | None
    within_budget: bool | None
    verdict: str
    estimate_ms: float | None = None

    @property
    def speedup(self) -> float | None:
        return None if not self.latency_ratio else 1.0 / self.latency_ratio

    def to_dict(self) -> dict:
        return {
            "candidate": self.label,
            "excluded_regions": list(self.regions),
            "excluded_nodes": self.excluded,
            "latency_ratio_vs_fp32": _round(self.latency_ratio),
            "speedup_vs_fp32": _round(self.speedup),
            "drop": _round(self.drop),
            "within_budget": self.within_budget,
            "verdict": self.verdict,
            "profile_estimate_saved_ms": _round(self.estimate_ms),
        }


@dataclass(frozen=True)
class SearchResult:
    """The pick (None: ship FP32), every measured row and why the pick won."""

    excluded: tuple[str, ...] | None
    regions: tuple[str, ...]
    rows: tuple[Row, ...]
    reason: str
    stopped: str
    elapsed_s: float
    confirmed_ratio: float | None = None
    profile: dict = field(default_factory=dict)

    @property
    def ships_fp32(self) -> bool:
        return self.excluded is None

    def to_dict(self) -> dict:
        return {
            "shipped": "fp32" if self.ships_fp32 else "int8",
            "excluded_regions": list(self.regions),
            "confirmed_latency_ratio_vs_fp32": _round(self.confirmed_ratio),
            "reason": self.reason,
            "stopped": self.stopped,
            "elapsed_s": round(self.elapsed_s, 2),
            "table": [r.to_dict() for r in self.rows],
            "profile": self.profile,
        }

    def table_lines(self) -> list[str]:
        """The table as text lines (candidate, regions, latency ratio, drop, verdict)."""
        lines = ["candidate | kept in FP32 | INT8/FP32 latency | drop | verdict"]
        for row in self.rows:
            ratio = "-" if row.latency_ratio is None else f"{row.latency_ratio:.3f}"
            drop = "-" if row.drop is None else f"{row.drop:.2f}"
            kept = ", ".join(row.regions) or "(none)"
            lines.append(f"{row.label} | {kept} | {ratio} | {drop} | {row.verdict}")
        return lines


def _round(value: float | None) -> float | None:
    return None if value is None else round(float(value), 4)


def search(
    regions: Sequence[Region],
    *,
    base_excluded: tuple[str, ...],
    build: Build,
    measure: Measure,
    evaluate: Evaluate,
    within: Callable[[Accuracy], bool],
    time_budget_s: float = DEFAULT_TIME_S,
    estimates: dict[str, float] | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> SearchResult:
    """Greedy forward search over region families, each step measured against FP32.

    Start from `base_excluded` (what the accuracy budget already keeps in FP32), try adding each
    region family (in the order of the profile's estimated saving), keep a step when it is
    faster by `MIN_STEP_GAIN` and within the budget; stop when no step helps or the time is up.
    The best candidate ships only if a confirming measurement also finds it faster than FP32.
    """
    greedy = _Greedy(build, measure, evaluate, within, time_budget_s, estimates or {}, clock)
    return greedy.run(regions, base_excluded)


@dataclass
class _Greedy:
    build: Build
    measure: Measure
    evaluate: Evaluate
    within: Callable[[Accuracy], bool]
    time_budget_s: float
    estimates: dict[str, float]
    clock: Callable[[], float]

    def __post_init__(self) -> None:
        self.start = self.clock()
        self.rows: list[Row] = []
        self.accuracies: dict[tuple[str, ...], Accuracy] = {}
        self.stopped = "done"

    def accuracy(self, excluded: tuple[str, ...]) -> Accuracy:
        if excluded not in self.accuracies:
            self.accuracies[excluded] = self.evaluate(excluded)
        return self.accuracies[excluded]

    def run(self, regions: Sequence[Region], base: tuple[str, ...]) -> SearchResult:
        accuracy, ratio = self.accuracy(base), self.measure(self.build(base))
        ok = self.within(accuracy)
        label = "INT8 (accuracy fallback)" if base else "INT8 (all quantized)"
        self.rows.append(Row(label, (), len(base), ratio, accuracy.drop, ok, "start"))
        best = (base, (), ratio) if ok else None
        order = self._order(regions)
        tried = {base}
        while best is not None and self.stopped == "done":
            step = self._next_step(order, best, tried)
            if step is None:
                break
            best = step
        return self._finish(best)

    def _order(self, regions: Sequence[Region]) -> list[Region]:
        """By the profile's estimated saving; families it says save nothing are only listed."""
        order = sorted(regions, key=lambda r: -self.estimates.get(r.name, 0.0))
        if self.estimates:
            for region in order:
                saved = self.estimates.get(region.name, 0.0)
                if saved <= 0:
                    row = Row(f"+ {region.name}", (region.name,), len(region.nodes), None, None,
                              None, "profile: no saving", saved)  # fmt: skip
                    self.rows.append(row)
            order = [r for r in order if self.estimates.get(r.name, 0.0) > 0]
        return order[:MAX_REGIONS]

    def _next_step(self, order, current, tried):
        """The first family that makes `current` faster within the budget, or None."""
        excluded, names, ratio_now = current
        for region in order:
            candidate = tuple(dict.fromkeys((*excluded, *region.nodes)))
            if region.name in names or candidate in tried:
                continue
            if self.clock() - self.start > self.time_budget_s:
                self.stopped = f"time budget ({self.time_budget_s:g} s) spent"
                return None
            tried.add(candidate)
            ratio = self.measure(self.build(candidate))
            regions_now = (*names, region.name)
            saved = self.estimates.get(region.name)
            row = (f"+ {region.name}", regions_now, len(candidate), ratio)
            if ratio > ratio_now * (1 - MIN_STEP_GAIN):
                self.rows.append(Row(*row, None, None, "not faster", saved))
                continue
            accuracy = self.accuracy(candidate)
            drop, ok = accuracy.drop, self.within(accuracy)
            self.rows.append(Row(*row, drop, ok, "kept" if ok else "over the accuracy budget",
                                 saved))  # fmt: skip
            if ok:
                return candidate, regions_now, ratio
        return None

    def _finish(self, best) -> SearchResult:
        def result(excluded, names, reason, confirmed=None) -> SearchResult:
            elapsed = self.clock() - self.start
            return SearchResult(excluded, names, tuple(self.rows), reason, self.stopped,
                                elapsed, confirmed)  # fmt: skip

        if best is None:
            return result(None, (), "no INT8 candidate met the accuracy budget")
        excluded, names, ratio = best
        if ratio >= 1.0 - MIN_GAIN_VS_FP32:
            return result(None, (), "no INT8 candidate beat FP32 by 5%: the fastest within the "
                          f"budget measured {1 / ratio:.2f}x FP32")  # fmt: skip
        confirmed = self.measure(self.build(excluded))
        self.rows.append(Row("confirm: " + (", ".join(names) or "all quantized"), names,
                             len(excluded), confirmed, self.accuracy(excluded).drop, True,
                             "confirmation"))  # fmt: skip
        if confirmed >= 1.0 - MIN_GAIN_VS_FP32:
            return result(None, (), f"the fastest INT8 candidate measured {1 / ratio:.2f}x FP32 "
                          f"but {1 / confirmed:.2f}x when measured again: not reliably 5% faster "
                          "than FP32", confirmed)  # fmt: skip
        mean = statistics.mean((ratio, confirmed))
        return result(excluded, names, f"fastest within the budget: {1 / mean:.2f}x FP32",
                      confirmed)  # fmt: skip


# --- measurement ---------------------------------------------------------------------------------


def measure_ratio(
    fp32: Artifact,
    candidate: Path,
    *,
    batch: int,
    threads: int | None,
    rounds: int = 4,
    round_s: float = 0.08,
) -> float:
    """Candidate p50 / FP32 p50 on ort-cpu, timed in interleaved rounds (runtimes.interleaved)."""
    result = interleaved_ab(
        fp32, replace(fp32, path=Path(candidate)), runtime="ort-cpu", batch=batch,
        threads=threads, rounds=rounds, iters_per_round=50, round_s=round_s, warmup=2,
    )  # fmt: skip
    return float(result.ratio)


# --- profile -------------------------------------------------------------------------------------

_SUFFIX = re.compile(r"(_token_\d+|_fused.*|_nchwc.*)$", re.IGNORECASE)
_QDQ = re.compile(r"^(?P<tensor>.+)_(QuantizeLinear|DequantizeLinear)$")


def profile_nodes(
    path: Path, feeds: dict[str, np.ndarray], *, threads: int | None, iters: int = 10
) -> dict[str, float]:
    """Mean kernel time (microseconds) per node of the optimized session (ORT's profiler)."""
    import onnxruntime

    with tempfile.TemporaryDirectory(prefix="tsprof-") as tmp:
        options = onnxruntime.SessionOptions()
        options.enable_profiling = True
        options.profile_file_prefix = str(Path(tmp) / "ort_profile")
        if threads:
            options.intra_op_num_threads = threads
        session = onnxruntime.InferenceSession(
            str(path), options, providers=["CPUExecutionProvider"]
        )
        session.run(None, feeds)  # warm-up, not profiled apart: dropped below by the mean
        for _ in range(iters):
            session.run(None, feeds)
        trace = json.loads(Path(session.end_profiling()).read_text())
    totals: collections.Counter = collections.Counter()
    for event in trace:
        if event.get("cat") == "Node" and str(event.get("name", "")).endswith("_kernel_time"):
            totals[event["name"][: -len("_kernel_time")]] += float(event.get("dur", 0))
    return {name: us / (iters + 1) for name, us in totals.items()}


def attribute(profile: dict[str, float], graph: Graph) -> dict[str, float]:
    """Kernel time per FP32 graph node: fused-kernel suffixes stripped, a Q/DQ kernel charged to
    the node producing (else first consuming) its tensor; the rest under "(other)"."""
    known = set(graph.by_name)
    out: collections.Counter = collections.Counter()
    for kernel, us in profile.items():
        name = _SUFFIX.sub("", kernel)
        match = _QDQ.match(kernel)
        if name in known:
            out[name] += us
        elif match:
            tensor = match["tensor"]
            node = graph.producer.get(tensor) or next(iter(graph.consumers.get(tensor, [])), None)
            out[node.name if node is not None else "(other)"] += us
        else:
            out["(other)"] += us
    return dict(out)


def region_estimates(
    regions: Sequence[Region], int8: dict[str, float], fp32: dict[str, float]
) -> dict[str, float]:
    """Estimated ms saved by keeping each region in FP32: its INT8 time (Q/DQ included) minus
    its FP32 time. A guide for the search order only; the search measures every step."""
    return {
        r.name: sum(int8.get(n, 0.0) - fp32.get(n, 0.0) for n in r.nodes) / 1000.0 for r in regions
    }


def profile_summary(int8: dict[str, float], fp32: dict[str, float], top: int = 8) -> dict:
    """Totals and the nodes where INT8 loses most time against FP32 (ms per run)."""
    loss = {n: int8.get(n, 0.0) - fp32.get(n, 0.0) for n in set(int8) | set(fp32)}
    worst = sorted(loss.items(), key=lambda kv: -kv[1])[:top]
    return {
        "int8_ms": round(sum(int8.values()) / 1000, 4),
        "fp32_ms": round(sum(fp32.values()) / 1000, 4),
        "int8_slower_nodes": [
            {
                "node": n,
                "int8_ms": round(int8.get(n, 0) / 1000, 4),
                "fp32_ms": round(fp32.get(n, 0) / 1000, 4),
            }
            for n, d in worst
            if d > 0
        ],  # fmt: skip
    }
