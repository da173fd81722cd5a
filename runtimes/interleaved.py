"""Interleaved A/B latency on one machine (`torchship regress A B`).

Two sessions timed alternately in one process disturb each other through spinning intra-op
thread pools (a 1.7x gap once read as 1.04x; DESIGN.md). So each round loads one side, times it
and releases it before the other side loads; ORT runners run with spinning off (their default);
the order alternates A B, B A, ... so slow drift of the machine hits both sides alike.
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from torchship.artifact import Artifact
from torchship.errors import ConfigError
from torchship.runtimes.base import Runner, default_runtime_for, require_available
from torchship.runtimes.bench import _feeds_for_batch
from torchship.runtimes.stats import Stats
from torchship.runtimes.timing import measure, timer_for

__all__ = ["ABResult", "interleaved_ab"]


@dataclass(frozen=True)
class ABResult:
    """Both sides' latency and the per-round ratios of B's median latency over A's."""

    runtime: str
    batch: int
    a: str
    b: str
    a_latency_ms: Stats
    b_latency_ms: Stats
    round_ratios: tuple[float, ...]

    @property
    def ratio(self) -> float:
        """B / A latency, the median over rounds (> 1: B is slower)."""
        return statistics.median(self.round_ratios)

    def b_slower(self, *, threshold_pct: float) -> bool:
        """True when B is slower than A by more than `threshold_pct` percent."""
        if threshold_pct < 0:
            raise ConfigError(f"threshold must be >= 0 percent, got {threshold_pct}")
        return self.ratio > 1 + threshold_pct / 100

    def to_dict(self) -> dict[str, Any]:
        return {
            "runtime": self.runtime,
            "batch": self.batch,
            "a": {"artifact": self.a, "latency_ms": self.a_latency_ms.to_dict()},
            "b": {"artifact": self.b, "latency_ms": self.b_latency_ms.to_dict()},
            "ratio_b_over_a": round(self.ratio, 4),
            "round_ratios": [round(r, 4) for r in self.round_ratios],
        }


def interleaved_ab(
    a: Artifact,
    b: Artifact,
    *,
    runtime: str | None = None,
    batch: int | None = None,
    threads: int | None = None,
    rounds: int = 6,
    iters_per_round: int = 30,
    warmup: int = 5,
    seed: int = 0,
) -> ABResult:
    """Time A and B in alternating rounds on the same feeds; see the module docstring."""
    if rounds < 2 or iters_per_round < 1 or warmup < 0:
        raise ConfigError(
            f"need rounds >= 2, iters_per_round >= 1, warmup >= 0; got {rounds}, "
            f"{iters_per_round}, {warmup}"
        )
    runtime = runtime or default_runtime_for(a.format)
    batch = batch or (a.inputs[0].shape[0] if a.inputs and a.inputs[0].shape else 1)
    feeds = _feeds_for_batch(a, batch=batch, seed=seed)
    _feeds_for_batch(b, batch=batch, seed=seed)  # B must take the same batch
    cls = require_available(runtime)
    runners = {"a": cls(a, threads=threads), "b": cls(b, threads=threads)}
    samples: dict[str, list[list[float]]] = {"a": [], "b": []}
    for index in range(rounds):
        for side in ("a", "b") if index % 2 == 0 else ("b", "a"):
            samples[side].append(
                _time_round(runners[side], feeds, warmup=warmup, iters=iters_per_round)
            )
    ratios = tuple(
        statistics.median(sb) / statistics.median(sa)
        for sa, sb in zip(samples["a"], samples["b"], strict=True)
    )
    return ABResult(
        runtime=runtime,
        batch=batch,
        a=str(a.path),
        b=str(b.path),
        a_latency_ms=Stats.from_samples([s for chunk in samples["a"] for s in chunk]),
        b_latency_ms=Stats.from_samples([s for chunk in samples["b"] for s in chunk]),
        round_ratios=ratios,
    )


def _time_round(
    runner: Runner, feeds: Mapping[str, np.ndarray], *, warmup: int, iters: int
) -> list[float]:
    """Load, time `iters` calls, release: only one side holds a session at any time."""
    runner.load()
    try:
        return measure(
            lambda: runner.infer(feeds),
            warmup=warmup,
            iters=iters,
            min_time_s=None,
            max_iters=None,
            timer=timer_for(runner.device),
        )
    finally:
        runner.close()
