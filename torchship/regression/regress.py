"""Interleaved A/B of two artifact files on this machine, judged like a row of `compare`."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from torchship.artifact import Artifact
from torchship.errors import ConfigError
from torchship.regression.documents import DocumentComparison, RowComparison
from torchship.regression.stats import CompareConfig, compare_rounds
from torchship.runtimes.interleaved import interleaved_ab
from torchship.specs import InputSpec

__all__ = ["regress_artifacts"]


def regress_artifacts(
    a: str | os.PathLike,
    b: str | os.PathLike,
    *,
    threshold_pct: float,
    inputs: Sequence[InputSpec] | None = None,
    iters: int,
    **timing,
) -> DocumentComparison:
    """Interleaved A/B of two artifact files, as a one-row DocumentComparison.

    `timing` goes to `interleaved_ab` (runtime, runtime_b, batch, threads, rounds, warmup, seed);
    `iters` is the number of timed calls per round. Fewer rounds than a verdict needs is a
    ConfigError: such a gate could never fail.
    """
    config = CompareConfig(threshold_pct=threshold_pct)
    rounds = timing.get("rounds")
    if rounds is not None and rounds < config.min_rounds:
        raise ConfigError(f"--rounds {rounds}: a verdict needs at least {config.min_rounds} rounds")
    first, second = [Artifact.open(p, inputs=inputs) for p in (a, b)]
    ab = interleaved_ab(first, second, iters_per_round=iters, **timing)
    verdict = compare_rounds(ab.a_rounds, ab.b_rounds, config=config)
    runtimes = ab.runtime if ab.runtime_b == ab.runtime else f"{ab.runtime} vs {ab.runtime_b}"
    key = (
        runtimes,
        second.precision.value,
        f"batch {ab.batch}",
        f"{Path(a).name} -> {Path(b).name}",
    )
    return DocumentComparison((RowComparison(key, verdict),), None, None, threshold_pct)
