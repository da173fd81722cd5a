"""Latency regression verdicts from raw samples: faster / same / slower, robust to noise.

The statistic is the ratio of medians (candidate / baseline) with a bootstrap confidence
interval. A verdict of *slower* needs both a practical and a statistical reason: the ratio is
above `1 + threshold` **and** the whole interval lies above 1. That keeps A/A false alarms far
below 1% while a true slowdown of twice the threshold is caught almost always (see
tests/regression/test_regression_calibration.py and scripts/bench_regress.py).

Two sample layouts:
- independent runs (`compare_samples`): each side is one bag of samples; an i.i.d. bootstrap.
  Drift between the two runs is invisible to it, which is why `regress` is preferred on CI.
- interleaved rounds (`compare_rounds`): both sides timed in alternating blocks; a two-level
  bootstrap (rounds, then samples within each round) on the median of per-round ratios, so a
  noisy round widens the interval instead of moving the verdict.
"""

from __future__ import annotations

import enum
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from torchship.errors import ConfigError

__all__ = [
    "CompareConfig",
    "Comparison",
    "Verdict",
    "compare_samples",
    "compare_rounds",
]

log = logging.getLogger(__name__)


class Verdict(str, enum.Enum):
    FASTER = "faster"
    SAME = "same"
    SLOWER = "slower"
    #: Too few samples (or rounds) to say anything; never a regression, but reported.
    INCONCLUSIVE = "inconclusive"


@dataclass(frozen=True)
class CompareConfig:
    """How to judge. `threshold_pct` is a percentage (5 means 5%); `confidence` is two-sided."""

    threshold_pct: float = 5.0
    confidence: float = 0.99
    n_boot: int = 2000
    min_samples: int = 20
    min_rounds: int = 4
    seed: int = 0

    def __post_init__(self) -> None:
        if not 0 <= self.threshold_pct < 1000:
            raise ConfigError(f"threshold must be in [0, 1000) percent, got {self.threshold_pct}")
        if not 0.5 <= self.confidence < 1:
            raise ConfigError(f"confidence must be in [0.5, 1), got {self.confidence}")
        if self.n_boot < 100:
            raise ConfigError(f"n_boot must be >= 100, got {self.n_boot}")
        if self.min_samples < 2 or self.min_rounds < 2:
            raise ConfigError(
                f"min_samples and min_rounds must be >= 2, got {self.min_samples}, "
                f"{self.min_rounds}"
            )

    @property
    def limit(self) -> float:
        """The slowdown ratio above which a significant difference counts as a regression."""
        return 1 + self.threshold_pct / 100


@dataclass(frozen=True)
class Comparison:
    """Candidate vs baseline: ratio of medians (> 1: candidate slower) and its interval."""

    verdict: Verdict
    ratio: float
    ci_low: float
    ci_high: float
    baseline_p50: float
    candidate_p50: float
    n_baseline: int
    n_candidate: int
    threshold_pct: float
    note: str = ""

    @property
    def regressed(self) -> bool:
        return self.verdict is Verdict.SLOWER

    @property
    def change_pct(self) -> float:
        return (self.ratio - 1) * 100

    def to_dict(self) -> dict:
        """JSON-ready: a number that is not finite (an inconclusive interval) is null."""
        return {
            "verdict": self.verdict.value,
            "ratio": _finite(self.ratio, 5),
            "change_pct": _finite(self.change_pct, 3),
            "ci": [_finite(self.ci_low, 5), _finite(self.ci_high, 5)],
            "baseline_p50_ms": _finite(self.baseline_p50, 6),
            "candidate_p50_ms": _finite(self.candidate_p50, 6),
            "n_baseline": self.n_baseline,
            "n_candidate": self.n_candidate,
            "threshold_pct": self.threshold_pct,
            **({"note": self.note} if self.note else {}),
        }


def _finite(value: float, digits: int) -> float | None:
    # NaN and inf are not JSON; json.dumps would write them anyway
    return round(float(value), digits) if math.isfinite(value) else None


def compare_samples(
    baseline: Sequence[float], candidate: Sequence[float], *, config: CompareConfig | None = None
) -> Comparison:
    """Verdict on two independent bags of latency samples (ms)."""
    config = config or CompareConfig()
    base, cand = _clean("baseline", baseline), _clean("candidate", candidate)
    ratio = float(np.median(cand) / np.median(base))
    common = dict(
        baseline_p50=float(np.median(base)),
        candidate_p50=float(np.median(cand)),
        n_baseline=base.size,
        n_candidate=cand.size,
        threshold_pct=config.threshold_pct,
    )
    if min(base.size, cand.size) < config.min_samples:
        note = f"fewer than {config.min_samples} samples on a side"
        return Comparison(Verdict.INCONCLUSIVE, ratio, np.nan, np.nan, **common, note=note)
    rng = np.random.default_rng(config.seed)
    boot_base = _boot_medians(rng, base, config.n_boot)
    boot_cand = _boot_medians(rng, cand, config.n_boot)
    low, high = _interval(boot_cand / boot_base, config.confidence)
    return Comparison(_verdict(ratio, low, high, config), ratio, low, high, **common)


def compare_rounds(
    baseline_rounds: Sequence[Sequence[float]],
    candidate_rounds: Sequence[Sequence[float]],
    *,
    config: CompareConfig | None = None,
) -> Comparison:
    """Verdict on interleaved rounds: round i of each side was timed back to back."""
    config = config or CompareConfig()
    base = _rounds("baseline", baseline_rounds)
    cand = _rounds("candidate", candidate_rounds)
    if base.shape[0] != cand.shape[0]:
        raise ConfigError(f"{base.shape[0]} baseline rounds but {cand.shape[0]} candidate rounds")
    ratio = float(np.median(np.median(cand, axis=1) / np.median(base, axis=1)))
    common = dict(
        baseline_p50=float(np.median(base)),
        candidate_p50=float(np.median(cand)),
        n_baseline=base.size,
        n_candidate=cand.size,
        threshold_pct=config.threshold_pct,
    )
    if base.shape[0] < config.min_rounds:
        note = f"fewer than {config.min_rounds} rounds"
        return Comparison(Verdict.INCONCLUSIVE, ratio, np.nan, np.nan, **common, note=note)
    rng = np.random.default_rng(config.seed)
    picks = rng.integers(0, base.shape[0], size=(config.n_boot, base.shape[0]))
    per_round = _boot_round_medians(rng, cand, picks) / _boot_round_medians(rng, base, picks)
    low, high = _interval(np.median(per_round, axis=1), config.confidence)
    return Comparison(_verdict(ratio, low, high, config), ratio, low, high, **common)


def _verdict(ratio: float, low: float, high: float, config: CompareConfig) -> Verdict:
    if ratio > config.limit and low > 1.0:
        return Verdict.SLOWER
    if ratio < 1 / config.limit and high < 1.0:
        return Verdict.FASTER
    return Verdict.SAME


def _clean(side: str, samples: Sequence[float]) -> np.ndarray:
    try:
        raw = np.asarray(samples)
    except (TypeError, ValueError):  # ragged nesting
        raw = None
    if raw is None or raw.dtype.kind not in "iuf":
        shown = repr(samples)
        shown = shown if len(shown) <= 60 else shown[:57] + "..."
        raise ConfigError(f"{side}: latency samples must be a list of numbers (ms), got {shown}")
    values = raw.astype(np.float64).ravel()
    if values.size == 0:
        raise ConfigError(f"{side}: no latency samples to compare")
    if not np.all(np.isfinite(values)) or np.any(values <= 0):
        raise ConfigError(f"{side}: latency samples must be finite and > 0 ms")
    return values


def _rounds(side: str, rounds: Sequence[Sequence[float]]) -> np.ndarray:
    try:
        lengths = {len(r) for r in rounds}
    except TypeError:
        raise ConfigError(f"{side}: rounds must be lists of latency samples (ms)") from None
    if len(lengths) != 1:
        raise ConfigError(f"{side}: rounds must all hold the same number of samples, got {lengths}")
    return _clean(side, [s for r in rounds for s in r]).reshape(len(rounds), lengths.pop())


def _boot_medians(rng: np.random.Generator, values: np.ndarray, n_boot: int) -> np.ndarray:
    picks = rng.integers(0, values.size, size=(n_boot, values.size))
    return np.median(values[picks], axis=1)


def _boot_round_medians(
    rng: np.random.Generator, rounds: np.ndarray, picks: np.ndarray
) -> np.ndarray:
    """(n_boot, n_rounds) medians: the picked rounds, each resampled within itself."""
    per_round = rounds.shape[1]
    inner = rng.integers(0, per_round, size=(*picks.shape, per_round))
    return np.median(rounds[picks[..., None], inner], axis=2)


def _interval(ratios: np.ndarray, confidence: float) -> tuple[float, float]:
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(ratios, [tail, 100 - tail])
    return float(low), float(high)
