"""Interleaved A/B latency on one machine (`torchship regress A B`).

Why interleave: on a shared CI machine the load changes from minute to minute, so two runs timed
one after the other differ by more than the regressions worth catching. Timing A and B in
alternating short rounds (A B, B A, A B, ...) lets that drift hit both sides alike, and the
verdict (`torchship.regression.compare_rounds`) works on per-round ratios.

Why one session at a time: two sessions timed alternately in one process disturb each other
through spinning intra-op thread pools (a 1.7x gap once read as 1.04x; DESIGN.md). Each round
loads one side, times it and releases it before the other side loads; ORT runners run with
spinning off (their default).
"""

from __future__ import annotations

import contextlib
import statistics
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any

import numpy as np

from torchship.artifact import Artifact
from torchship.errors import ConfigError
from torchship.runtimes.base import default_runtime_for, require_available
from torchship.runtimes.bench import feeds_for_batch
from torchship.runtimes.stats import Stats
from torchship.runtimes.timing import Timer, measure, timer_for

__all__ = ["ABResult", "interleaved_ab", "interleaved_rounds", "runner_session"]

#: A side of an A/B run: entering it loads the thing to time and yields the call to time.
Session = Callable[[], AbstractContextManager[Callable[[], Any]]]


@dataclass(frozen=True)
class ABResult:
    """Both sides' latency, per-round raw samples and per-round ratios of B's median over A's."""

    runtime: str
    batch: int
    a: str
    b: str
    a_latency_ms: Stats
    b_latency_ms: Stats
    round_ratios: tuple[float, ...]
    a_rounds: tuple[tuple[float, ...], ...] = ()
    b_rounds: tuple[tuple[float, ...], ...] = ()
    runtime_b: str | None = None

    @property
    def ratio(self) -> float:
        """B / A latency, the median over rounds (> 1: B is slower)."""
        return statistics.median(self.round_ratios)

    def b_slower(self, *, threshold_pct: float) -> bool:
        """True when B is slower than A by more than `threshold_pct` percent (point estimate).

        For a verdict with a confidence interval use `torchship.regression.compare_rounds`.
        """
        if threshold_pct < 0:
            raise ConfigError(f"threshold must be >= 0 percent, got {threshold_pct}")
        return self.ratio > 1 + threshold_pct / 100

    def to_dict(self) -> dict[str, Any]:
        return {
            "runtime": self.runtime,
            "runtime_b": self.runtime_b or self.runtime,
            "batch": self.batch,
            "a": {"artifact": self.a, "latency_ms": self.a_latency_ms.to_dict()},
            "b": {"artifact": self.b, "latency_ms": self.b_latency_ms.to_dict()},
            "ratio_b_over_a": round(self.ratio, 4),
            "round_ratios": [round(r, 4) for r in self.round_ratios],
        }


def interleaved_rounds(
    sides: Mapping[str, Session],
    *,
    rounds: int,
    iters_per_round: int,
    warmup: int,
    timer: Timer | None = None,
) -> dict[str, list[list[float]]]:
    """Time each side for `iters_per_round` calls per round, alternating the order every round.

    Only one side's session is open at any time: each is closed (its runner drops the session)
    before the other loads. No `gc.collect()` between rounds: with torch loaded it costs ~0.2 s,
    more than the rounds themselves on small models. Returns the raw samples (ms) by side and round.
    """
    if rounds < 2 or iters_per_round < 1 or warmup < 0:
        raise ConfigError(
            f"need rounds >= 2, iters_per_round >= 1, warmup >= 0; got {rounds}, "
            f"{iters_per_round}, {warmup}"
        )
    names = list(sides)
    samples: dict[str, list[list[float]]] = {name: [] for name in names}
    for index in range(rounds):
        for name in names if index % 2 == 0 else names[::-1]:
            with sides[name]() as call:
                samples[name].append(
                    measure(
                        call,
                        warmup=warmup,
                        iters=iters_per_round,
                        min_time_s=None,
                        max_iters=None,
                        timer=timer,
                    )
                )
    return samples


def runner_session(
    runtime: str, artifact: Artifact, feeds: Mapping[str, np.ndarray], *, threads: int | None
) -> Session:
    """A side that loads `artifact` on `runtime` and times `infer(feeds)`."""
    cls = require_available(runtime)

    @contextlib.contextmanager
    def session() -> Iterator[Callable[[], Any]]:
        runner = cls(artifact, threads=threads)
        runner.load()
        try:
            yield lambda: runner.infer(feeds)
        finally:
            runner.close()

    return session


def interleaved_ab(
    a: Artifact,
    b: Artifact,
    *,
    runtime: str | None = None,
    runtime_b: str | None = None,
    batch: int | None = None,
    threads: int | None = None,
    rounds: int = 6,
    iters_per_round: int = 30,
    warmup: int = 5,
    seed: int = 0,
) -> ABResult:
    """Time A and B in alternating rounds on the same feeds; see the module docstring.

    `runtime` defaults to A's format's runtime; `runtime_b` to `runtime` when B's format allows
    it, else to B's format's runtime.
    """
    if batch is not None and batch < 1:
        raise ConfigError(f"batch must be >= 1, got {batch}")
    runtime = runtime or default_runtime_for(a.format)
    if runtime_b is None:
        runtime_b = runtime if _runs(runtime, b) else default_runtime_for(b.format)
    batch = batch or (a.inputs[0].shape[0] if a.inputs and a.inputs[0].shape else 1)
    feeds = feeds_for_batch(a, batch=batch, seed=seed)
    feeds_for_batch(b, batch=batch, seed=seed)  # B must take the same batch
    cls = require_available(runtime)
    sides = {
        "a": runner_session(runtime, a, feeds, threads=threads),
        "b": runner_session(runtime_b, b, feeds, threads=threads),
    }
    samples = interleaved_rounds(
        sides, rounds=rounds, iters_per_round=iters_per_round, warmup=warmup,
        timer=timer_for(cls.device),
    )  # fmt: skip
    return _result(runtime, runtime_b, batch, a, b, samples["a"], samples["b"])


def _runs(runtime: str, artifact: Artifact) -> bool:
    from torchship.runtimes.base import get_runner

    return artifact.format in get_runner(runtime).formats


def _result(
    runtime: str,
    runtime_b: str,
    batch: int,
    a: Artifact,
    b: Artifact,
    a_rounds: Sequence[Sequence[float]],
    b_rounds: Sequence[Sequence[float]],
) -> ABResult:
    ratios = tuple(
        statistics.median(sb) / statistics.median(sa)
        for sa, sb in zip(a_rounds, b_rounds, strict=True)
    )
    return ABResult(
        runtime=runtime,
        batch=batch,
        a=str(a.path),
        b=str(b.path),
        a_latency_ms=Stats.from_samples([s for chunk in a_rounds for s in chunk]),
        b_latency_ms=Stats.from_samples([s for chunk in b_rounds for s in chunk]),
        round_ratios=ratios,
        a_rounds=tuple(tuple(r) for r in a_rounds),
        b_rounds=tuple(tuple(r) for r in b_rounds),
        runtime_b=runtime_b,
    )
