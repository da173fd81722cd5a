"""Latency statistics, computed apart from the timing loops that collect the samples."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass

import numpy as np

from torchship.errors import ConfigError

__all__ = ["HIGH_CV", "Stats"]

#: Above this coefficient of variation (std / mean) a measurement is too noisy to trust.
HIGH_CV = 0.10


@dataclass(frozen=True)
class Stats:
    """Summary of latency samples in milliseconds. `cv` is std / mean (0 when mean is 0)."""

    p50: float
    p90: float
    p95: float
    p99: float
    mean: float
    std: float
    min: float
    max: float
    cv: float

    @classmethod
    def from_samples(cls, samples_ms: Sequence[float]) -> Stats:
        """Percentiles by linear interpolation; raises ConfigError on no or non-finite samples."""
        values = np.asarray(samples_ms, dtype=np.float64)
        if values.size == 0:
            raise ConfigError("cannot compute latency statistics from zero samples")
        if not np.all(np.isfinite(values)):
            raise ConfigError("latency samples contain NaN or infinity")
        p50, p90, p95, p99 = np.percentile(values, [50, 90, 95, 99])
        mean = float(values.mean())
        std = float(values.std(ddof=1)) if values.size > 1 else 0.0
        return cls(
            p50=float(p50),
            p90=float(p90),
            p95=float(p95),
            p99=float(p99),
            mean=mean,
            std=std,
            min=float(values.min()),
            max=float(values.max()),
            cv=std / mean if mean > 0 else 0.0,
        )

    def to_dict(self) -> dict[str, float]:
        return {k: round(v, 6) for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, data: Mapping[str, float]) -> Stats:
        missing = [f for f in cls.__dataclass_fields__ if f not in data]
        if missing:
            raise ConfigError(f"latency_ms is missing {', '.join(missing)}")
        values = {f: float(data[f]) for f in cls.__dataclass_fields__}
        if any(math.isnan(v) for v in values.values()):
            raise ConfigError("latency_ms holds NaN")
        return cls(**values)
