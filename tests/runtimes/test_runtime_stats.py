from __future__ import annotations

import math

import numpy as np
import pytest

from torchship.errors import ConfigError
from torchship.runtimes import HIGH_CV, Stats


def test_stats_on_known_samples():
    stats = Stats.from_samples([float(v) for v in range(1, 101)])
    assert stats.p50 == pytest.approx(50.5)
    assert stats.p90 == pytest.approx(90.1)
    assert stats.p95 == pytest.approx(95.05)
    assert stats.p99 == pytest.approx(99.01)
    assert stats.mean == pytest.approx(50.5)
    assert stats.min == 1.0 and stats.max == 100.0
    assert stats.std == pytest.approx(np.std(np.arange(1, 101), ddof=1))
    assert stats.cv == pytest.approx(stats.std / 50.5)


def test_constant_samples_have_zero_spread():
    stats = Stats.from_samples([2.0, 2.0, 2.0])
    assert stats.std == 0.0 and stats.cv == 0.0 and stats.p99 == 2.0
    assert Stats.from_samples([3.0]).std == 0.0


def test_high_cv_threshold():
    assert HIGH_CV == 0.10
    assert Stats.from_samples([1.0, 1.0, 1.0, 10.0]).cv > HIGH_CV


def test_round_trip_through_dict():
    stats = Stats.from_samples([1.0, 2.0, 4.0])
    data = stats.to_dict()
    assert set(data) == {"p50", "p90", "p95", "p99", "mean", "std", "min", "max", "cv"}
    again = Stats.from_dict(data)
    assert math.isclose(again.mean, stats.mean, rel_tol=1e-6)


@pytest.mark.parametrize(
    ("samples", "match"),
    [([], "zero samples"), ([1.0, float("nan")], "NaN or infinity")],
)
def test_bad_samples(samples, match):
    with pytest.raises(ConfigError, match=match):
        Stats.from_samples(samples)


def test_from_dict_names_missing_fields():
    with pytest.raises(ConfigError, match="latency_ms is missing p99"):
        Stats.from_dict({k: 1.0 for k in ("p50", "p90", "p95", "mean", "std", "min", "max", "cv")})
