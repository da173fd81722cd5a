"""Timing loops. They only collect samples (ms); `torchship.runtimes.stats` summarises them.

A `Timer` times one call of a function. `HostTimer` reads the host wall clock
(`time.perf_counter_ns`) and is what CPU runtimes use. `CudaEventTimer` records CUDA events
around the call and reports device time; GPU runners (TensorRT) get one from `timer_for("cuda")`
and hand it to the bench through a `make_timer()` method.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any, Protocol, runtime_checkable

from torchship.errors import BackendUnavailableError, ConfigError

__all__ = [
    "MIN_TIMED_ITERS",
    "Timer",
    "HostTimer",
    "CudaEventTimer",
    "cuda_event_timer",
    "timer_for",
    "measure",
    "time_cold_start",
]

log = logging.getLogger(__name__)

#: A min-time run still takes at least this many timed samples, however slow the model.
MIN_TIMED_ITERS = 5


@runtime_checkable
class Timer(Protocol):
    """Times one call of `fn`, in milliseconds. `clock` names what is measured (for reports)."""

    clock: str

    def time_call(self, fn: Callable[[], Any]) -> float: ...


class HostTimer:
    """Host wall-clock time of the call (includes any host<->device copies the call does)."""

    clock = "host-wall"

    def time_call(self, fn: Callable[[], Any]) -> float:
        start = time.perf_counter_ns()
        fn()
        return (time.perf_counter_ns() - start) / 1e6


class CudaEventTimer:
    """Device time between two CUDA events recorded on the current torch stream around the call.

    Only meaningful when the timed work is enqueued on that stream.
    """

    clock = "cuda-event"

    def __init__(self) -> None:
        import torch

        if not torch.cuda.is_available():
            raise BackendUnavailableError("CUDA event timing needs torch with a visible CUDA GPU")
        self._torch = torch

    def time_call(self, fn: Callable[[], Any]) -> float:
        start = self._torch.cuda.Event(enable_timing=True)
        end = self._torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        return float(start.elapsed_time(end))


def cuda_event_timer() -> CudaEventTimer:
    """A CUDA event timer; BackendUnavailableError when torch sees no CUDA device."""
    return CudaEventTimer()


def timer_for(device: str) -> Timer:
    """The timer for a runner on `device`: host wall clock on CPU, CUDA events on a GPU."""
    if device == "cuda":
        import torch

        if torch.cuda.is_available():
            return CudaEventTimer()
        log.info("torch has no CUDA; timing %s on the host wall clock", device)
    return HostTimer()


def measure(
    fn: Callable[[], Any],
    *,
    warmup: int,
    iters: int | None,
    min_time_s: float | None,
    max_iters: int | None,
    timer: Timer | None = None,
    progress: Callable[[int], None] | None = None,
) -> list[float]:
    """Run `fn` `warmup` times untimed, then time it; returns per-call latencies in ms.

    With `iters`, exactly `iters` timed calls. Otherwise calls go on until `min_time_s` of timed
    time has passed (at least MIN_TIMED_ITERS calls), capped at `max_iters`.
    `progress(n)` is called after the n-th timed call.
    """
    _check_counts(warmup=warmup, iters=iters, min_time_s=min_time_s, max_iters=max_iters)
    timer = timer or HostTimer()
    for _ in range(warmup):
        fn()
    samples: list[float] = []
    budget_ms = (min_time_s or 0.0) * 1e3
    elapsed_ms = 0.0
    while not _done(len(samples), elapsed_ms, iters=iters, budget_ms=budget_ms, cap=max_iters):
        sample = timer.time_call(fn)
        samples.append(sample)
        elapsed_ms += sample
        if progress is not None:
            progress(len(samples))
    return samples


def _done(
    count: int, elapsed_ms: float, *, iters: int | None, budget_ms: float, cap: int | None
) -> bool:
    if iters is not None:
        return count >= iters
    if cap is not None and count >= cap:
        return True
    return count >= MIN_TIMED_ITERS and elapsed_ms >= budget_ms


def _check_counts(
    *, warmup: int, iters: int | None, min_time_s: float | None, max_iters: int | None
) -> None:
    if warmup < 0:
        raise ConfigError(f"warmup must be >= 0, got {warmup}")
    if iters is not None and iters < 1:
        raise ConfigError(f"iters must be >= 1, got {iters}")
    if iters is None and min_time_s is None:
        raise ConfigError("give iters or min_time_s to bound the timing loop")
    if min_time_s is not None and min_time_s < 0:
        raise ConfigError(f"min_time_s must be >= 0, got {min_time_s}")
    if max_iters is not None and max_iters < 1:
        raise ConfigError(f"max_iters must be >= 1, got {max_iters}")


def time_cold_start(load_fn: Callable[[], Any], first_infer_fn: Callable[[], Any]) -> float:
    """Host wall time in ms of `load_fn()` followed by the first `first_infer_fn()`."""
    start = time.perf_counter_ns()
    load_fn()
    first_infer_fn()
    return (time.perf_counter_ns() - start) / 1e6
