"""The detector's calibration on synthetic latency distributions (fixed seeds, vectorized).

Latencies are log-normal (cv ~8%) with 5% of samples hit by exponential spikes, like a busy CPU.
Targets (issue 7): A/A false alarms <= 1%; a true 10% slowdown detected >= 95% of the time; a 3%
change (below the 5% threshold) reads `same`; 30% is always `slower`.
"""

from __future__ import annotations

import numpy as np
import pytest

from torchship.errors import ConfigError
from torchship.regression.stats import CompareConfig, Verdict, compare_rounds, compare_samples

TRIALS = 150
CONFIG = CompareConfig(n_boot=600)


def latencies(rng: np.random.Generator, shape, *, scale: float = 1.0) -> np.ndarray:
    x = 10.0 * scale * np.exp(rng.normal(0.0, 0.08, shape))
    spikes = rng.random(shape) < 0.05
    return np.where(spikes, x * (1 + rng.exponential(1.0, shape)), x)


def verdict_rates(slowdown: float, *, seed: int, n: int = 200) -> dict[Verdict, float]:
    rng = np.random.default_rng(seed)
    verdicts = [
        compare_samples(latencies(rng, n), latencies(rng, n, scale=slowdown), config=CONFIG).verdict
        for _ in range(TRIALS)
    ]
    return {v: verdicts.count(v) / TRIALS for v in Verdict}


def test_aa_false_alarms_at_most_1_percent():
    rates = verdict_rates(1.0, seed=1)
    assert rates[Verdict.SLOWER] <= 0.01
    assert rates[Verdict.FASTER] <= 0.01


def test_3_percent_is_below_the_threshold():
    assert verdict_rates(1.03, seed=2)[Verdict.SLOWER] <= 0.10


def test_10_percent_slowdown_detected_95_percent():
    assert verdict_rates(1.10, seed=3)[Verdict.SLOWER] >= 0.95


def test_30_percent_slowdown_always_detected():
    assert verdict_rates(1.30, seed=4)[Verdict.SLOWER] == 1.0


def test_10_percent_speedup_reads_faster():
    assert verdict_rates(1 / 1.10, seed=5)[Verdict.FASTER] >= 0.95


def rounds_verdicts(slowdown: float, *, seed: int, drift: float) -> list[Verdict]:
    """Interleaved rounds where each round's load moves both sides (drift) by up to +-drift."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(60):
        load = np.exp(rng.uniform(-drift, drift, (10, 1)))
        a = latencies(rng, (10, 20)) * load
        b = latencies(rng, (10, 20), scale=slowdown) * load
        out.append(compare_rounds(a.tolist(), b.tolist(), config=CONFIG).verdict)
    return out


def test_independent_runs_cannot_see_drift():
    # Why `regress` exists: the same A/A, but each run under its own machine load.
    rng = np.random.default_rng(9)
    alarms = sum(
        compare_samples(
            latencies(rng, 200) * np.exp(rng.uniform(-0.3, 0.3)),
            latencies(rng, 200) * np.exp(rng.uniform(-0.3, 0.3)),
            config=CONFIG,
        ).verdict
        is Verdict.SLOWER
        for _ in range(40)
    )
    assert alarms >= 8


def test_rounds_cancel_drift_that_breaks_independent_runs():
    aa = rounds_verdicts(1.0, seed=6, drift=0.3)
    assert aa.count(Verdict.SLOWER) == 0
    slow = rounds_verdicts(1.10, seed=7, drift=0.3)
    assert slow.count(Verdict.SLOWER) / len(slow) >= 0.95


def test_too_few_samples_is_inconclusive():
    result = compare_samples([1.0] * 5, [2.0] * 5)
    assert result.verdict is Verdict.INCONCLUSIVE and not result.regressed
    assert "fewer than 20 samples" in result.note
    rounds = compare_rounds([[1.0, 1.1]] * 3, [[2.0, 2.1]] * 3)
    assert rounds.verdict is Verdict.INCONCLUSIVE and "fewer than 4 rounds" in rounds.note


def test_result_is_reproducible_and_serializable():
    rng = np.random.default_rng(8)
    a, b = latencies(rng, 100), latencies(rng, 100, scale=1.2)
    first, second = compare_samples(a, b), compare_samples(a, b)
    assert first == second
    data = first.to_dict()
    assert data["verdict"] == "slower" and data["ci"][0] <= data["ratio"] <= data["ci"][1]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"threshold_pct": -1}, "threshold must be in"),
        ({"confidence": 1.0}, "confidence must be in"),
        ({"n_boot": 10}, "n_boot must be >= 100"),
        ({"min_samples": 1}, "min_samples and min_rounds must be >= 2"),
    ],
)
def test_bad_config_is_refused(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        CompareConfig(**kwargs)


def test_bad_samples_are_refused():
    with pytest.raises(ConfigError, match="baseline: no latency samples"):
        compare_samples([], [1.0])
    with pytest.raises(ConfigError, match="candidate: latency samples must be finite"):
        compare_samples([1.0], [float("nan")])
    with pytest.raises(ConfigError, match="same number of samples"):
        compare_rounds([[1.0], [1.0, 2.0]], [[1.0], [1.0]])
    with pytest.raises(ConfigError, match="4 baseline rounds but 2 candidate rounds"):
        compare_rounds([[1.0]] * 4, [[1.0]] * 2)
