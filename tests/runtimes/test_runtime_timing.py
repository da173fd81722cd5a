from __future__ import annotations

import time

import pytest
import torch

from torchship.errors import ConfigError
from torchship.runtimes.timing import (
    MIN_TIMED_ITERS,
    HostTimer,
    Timer,
    cuda_event_timer,
    measure,
    time_cold_start,
    timer_for,
)


class Counter:
    def __init__(self, sleep_s: float = 0.0) -> None:
        self.calls = 0
        self.sleep_s = sleep_s

    def __call__(self) -> None:
        self.calls += 1
        if self.sleep_s:
            time.sleep(self.sleep_s)


def test_measure_by_count():
    fn = Counter()
    seen = []
    samples = measure(fn, warmup=3, iters=7, min_time_s=None, max_iters=None, progress=seen.append)
    assert len(samples) == 7 and fn.calls == 10
    assert seen == list(range(1, 8))
    assert all(s >= 0 for s in samples)


def test_measure_by_min_time():
    fn = Counter(sleep_s=0.002)
    samples = measure(fn, warmup=0, iters=None, min_time_s=0.03, max_iters=None)
    assert sum(samples) >= 30.0
    assert len(samples) >= MIN_TIMED_ITERS
    assert min(samples) >= 2.0


def test_measure_takes_a_minimum_count_and_respects_the_cap():
    assert len(measure(Counter(), warmup=0, iters=None, min_time_s=0.0, max_iters=None)) == (
        MIN_TIMED_ITERS
    )
    capped = measure(Counter(), warmup=0, iters=None, min_time_s=60.0, max_iters=8)
    assert len(capped) == 8


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"warmup": -1, "iters": 1, "min_time_s": None, "max_iters": None}, "warmup must be"),
        ({"warmup": 0, "iters": 0, "min_time_s": None, "max_iters": None}, "iters must be"),
        ({"warmup": 0, "iters": None, "min_time_s": None, "max_iters": 5}, "give iters or"),
        ({"warmup": 0, "iters": None, "min_time_s": -1.0, "max_iters": 5}, "min_time_s must"),
        ({"warmup": 0, "iters": None, "min_time_s": 1.0, "max_iters": 0}, "max_iters must"),
    ],
)
def test_measure_rejects_bad_counts(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        measure(Counter(), **kwargs)


def test_time_cold_start_covers_load_and_first_call():
    order = []

    def load():
        order.append("load")
        time.sleep(0.005)

    def first():
        order.append("infer")

    assert time_cold_start(load, first) >= 5.0
    assert order == ["load", "infer"]


def test_host_timer_is_the_cpu_timer():
    timer = timer_for("cpu")
    assert isinstance(timer, HostTimer) and isinstance(timer, Timer)
    assert timer.clock == "host-wall"
    assert timer.time_call(lambda: time.sleep(0.002)) >= 2.0


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_event_timer_times_device_work():
    timer = cuda_event_timer()
    assert timer.clock == "cuda-event" and isinstance(timer_for("cuda"), type(timer))
    a = torch.randn(2048, 2048, device="cuda")
    ms = timer.time_call(lambda: a @ a)
    assert ms > 0.0
