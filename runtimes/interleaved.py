"""Interleaved A/B latency on one machine (`torchship regress A B`).

Why interleave: on a shared CI machine the load changes from minute to minute, so two runs timed
one after the other differ by more than the regressions worth catching. Timing A and B in
alternating short rounds (A B, B A, A B, ...) lets that drift hit both sides alike, and the
verdict (`torchship.regression.stats.compare_rounds`) works on per-round ratios.

Clocks: each side is timed by its own runner's timer, as the bench does (CUDA events on a GPU
runner's own stream, the host wall clock on CPU). When the two sides would time on different
clocks, both are timed on the host wall clock instead, so the ratio compares like with like;
`ABResult.clock` says which clock was used.

Why one session at a time: two sessions timed alternately in one process disturb each other
through spinning intra-op thread pools (a 1.7x gap once read as 1.04x; docs/design.md). Each round
loads one side, times it and releases it before the other side loads; ORT runners run with
spinning off (their default).
"""

from __future__ import annotations

import contextlib
import logging
import statistics
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from torchship.artifact import Artifact
from torchship.errors import ConfigError
from torchship.runtimes.base import Runner, default_runtime_for, get_runner, require_available
from torchship.runtimes.bench import feeds_for_batch, runner_timer
from torchship.runtimes.stats import Stats
from torchship.runtimes.timing import HostTimer, Timer, measure

__all__ = ["ABResult", "TimedCall", "interleaved_ab", "interleaved_rounds", "runner_session"]

log = logging.getLogger(__name__)

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
    #: What the samples measure: "host-wall" or "cuda-event" (device time, copies excluded).
    clock: str = HostTimer.clock

    @property
    def ratio(self) -> float:
        """B / A latency, the median over rounds (> 1: B is slower)."""
        return statistics.median(self.round_ratios)

    def b_slower(self, *, threshold_pct: float) -> bool:
        """True when B is slower than A by more than `threshold_pct` percent (point estimate).

        For a verdict with a confidence interval use `torchship.regression.stats.compare_rounds`.
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
            "clock": self.clock,
        }


@dataclass(frozen=True)
class TimedCall:
    """What a runner session yields: the call to time and the timer that fits its runner."""

    fn: Callable[[], Any]
    timer: Timer

    def __call__(self) -> Any:
        return self.fn()


def interleaved_rounds(
    sides: Mapping[str, Session],
    *,
    rounds: int,
    iters_per_round: int,
    warmup: int,
    timer: Timer | None = None,
) -> dict[str, list[list[float]]]:
    """Time each side for `iters_per_round` calls per round, alternating the order every round.

    A side that yields a `TimedCall` is timed with its own timer; other calls with `timer`
    (default: the host wall clock). Only one side's session is open at any time: each is closed
    (its runner drops the session) before the other loads. No `gc.collect()` between rounds: with
    torch loaded it costs ~0.2 s, more than the rounds themselves on small models. Returns the raw
    samples (ms) by side and round.
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
                        timer=call.timer if isinstance(call, TimedCall) else timer,
                    )
                )
    return samples


def runner_session(
    runtime: str,
    artifact: Artifact,
    feeds: Mapping[str, np.ndarray],
    *,
    threads: int | None,
    host_timing: bool = False,
) -> Session:
    """A side that loads `artifact` on `runtime` and times inference on `feeds`.

    It yields a `TimedCall` timed by the runner's own timer (as in the bench), or by the host
    wall clock with `host_timing`. Feeds are checked once per load, outside the timed calls.
    """
    cls = require_available(runtime)

    @contextlib.contextmanager
    def session() -> Iterator[Callable[[], Any]]:
        runner = cls(artifact, threads=threads)
        runner.load()
        try:
            timer = HostTimer() if host_timing else runner_timer(runner)
            yield TimedCall(runner.checked_call(feeds), timer)
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
    round_s: float | None = None,
    warmup: int = 5,
    seed: int = 0,
    feeds: Mapping[str, np.ndarray] | None = None,
) -> ABResult:
    """Time A and B in alternating rounds on the same feeds; see the module docstring.

    `runtime` defaults to A's format's runtime; `runtime_b` to `runtime` when B's format allows
    it, else to B's format's runtime. `feeds` (real data, say) replace the random feeds at
    `batch`. With `round_s`, a short probe of A sets the calls per round to about that many
    seconds (3 to `iters_per_round`), so a slow model does not run for minutes.
    """
    if batch is not None and batch < 1:
        raise ConfigError(f"batch must be >= 1, got {batch}")
    runtime = runtime or default_runtime_for(a.format)
    if runtime_b is None:
        runtime_b = runtime if _runs(runtime, b) else default_runtime_for(b.format)
    if feeds is None:
        batch = batch or next((s.shape[0] for s in a.inputs if s.shape), 1)
        feeds = feeds_for_batch(a, batch=batch, seed=seed)
        feeds_for_batch(b, batch=batch, seed=seed)  # B must take the same batch
    else:
        batch = next((v.shape[0] for v in feeds.values() if np.ndim(v)), 1)
    clock_a = _clock_of(require_available(runtime))
    clock_b = _clock_of(require_available(runtime_b))
    host_timing = clock_a != clock_b
    if host_timing:
        log.info(
            "%s times %s and %s times %s: timing both on the host wall clock",
            runtime, clock_a, runtime_b, clock_b,
        )  # fmt: skip
    sides = {
        "a": runner_session(runtime, a, feeds, threads=threads, host_timing=host_timing),
        "b": runner_session(runtime_b, b, feeds, threads=threads, host_timing=host_timing),
    }
    if round_s is not None:
        iters_per_round = _iters_for(sides["a"], round_s, most=iters_per_round)
    samples = interleaved_rounds(
        sides, rounds=rounds, iters_per_round=iters_per_round, warmup=warmup
    )
    result = _result(runtime, runtime_b, batch, a, b, samples["a"], samples["b"])
    return replace(result, clock=HostTimer.clock if host_timing else clock_a)


def _iters_for(side: Session, round_s: float, *, most: int) -> int:
    """Calls that fill about `round_s` seconds, from two probe calls (3 to `most`)."""
    probe = interleaved_rounds({"a": side}, rounds=2, iters_per_round=2, warmup=1)
    per_call_s = max(statistics.median(probe["a"][-1]) / 1000.0, 1e-5)
    return int(min(most, max(3, round_s / per_call_s)))


def _clock_of(cls: type[Runner]) -> str:
    # GPU runners time CUDA events on their own stream (`make_timer`); the rest the host clock.
    gpu_timed = cls.device == "cuda" and callable(getattr(cls, "make_timer", None))
    return "cuda-event" if gpu_timed else HostTimer.clock


def _runs(runtime: str, artifact: Artifact) -> bool:
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
