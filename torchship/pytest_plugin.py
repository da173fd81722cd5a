"""pytest plugin (entry point `pytest11`): latency budgets and regression checks in a test suite.

```python
@pytest.mark.latency
def test_model_is_fast_enough(torchship_latency):
    torchship_latency.assert_budget("dist/model.onnx", p90_ms=20, batch=8)
    torchship_latency.assert_no_regression("dist/model.onnx", baseline="main", batch=8)
```

The same statistics as `torchship compare`; a test skips (not fails) when the runtime it needs
is not available here. Options: `--torchship-min-time S` (timed seconds per measurement),
`--torchship-baselines DIR` (where `bench --save-baseline` filed the baselines).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path, PurePath
from typing import Any

import pytest

from torchship.artifact import Artifact
from torchship.errors import BackendUnavailableError
from torchship.regression.baselines import load_baseline
from torchship.regression.stats import CompareConfig, Comparison, Verdict, compare_samples
from torchship.runtimes import BenchConfig, BenchDocument, BenchResult, bench_runner
from torchship.runtimes.base import default_runtime_for, get_runner

# Only light modules above: pytest loads this plugin in every run, so no torch at import.

__all__ = ["LatencyChecker"]


class LatencyChecker:
    """What the `torchship_latency` fixture returns."""

    def __init__(self, *, min_time_s: float, baselines: str | None) -> None:
        self.min_time_s = min_time_s
        self.baselines = baselines

    def measure(
        self,
        artifact: str | Path,
        *,
        runtime: str | None = None,
        batch: int | None = None,
        inputs: Sequence[Any] | None = None,
        threads: int | None = None,
        min_samples: int | None = None,
    ) -> BenchResult:
        """Benchmark one artifact for `--torchship-min-time`, and for at least `min_samples`
        timed calls when given; skips the test when its runtime is unavailable here."""
        opened = Artifact.open(artifact, inputs=inputs)
        runtime = runtime or default_runtime_for(opened.format)
        reason = get_runner(runtime).unavailable_reason()
        if reason is not None:
            pytest.skip(f"runtime {runtime} is not available: {reason}")
        batch = batch or (opened.inputs[0].shape[0] if opened.inputs[0].shape else 1)
        config = BenchConfig(batches=(batch,), min_time_s=self.min_time_s, threads=threads)
        try:
            result = bench_runner(runtime, opened, config=config, batch=batch)
            if min_samples is not None and len(result.samples_ms) < min_samples:
                # slow calls: the time ran out first; a verdict needs this many samples
                config = replace(config, iters=min_samples, min_time_s=None)
                result = bench_runner(runtime, opened, config=config, batch=batch)
            return result
        except BackendUnavailableError as exc:
            pytest.skip(str(exc))

    def assert_budget(
        self,
        artifact: str | Path,
        *,
        p50_ms: float | None = None,
        p90_ms: float | None = None,
        p99_ms: float | None = None,
        **options: Any,
    ) -> BenchResult:
        """Fail when a latency percentile is over its budget (ms). Returns the BenchResult."""
        budgets = {"p50": p50_ms, "p90": p90_ms, "p99": p99_ms}
        if all(v is None for v in budgets.values()):
            raise ValueError("give at least one of p50_ms, p90_ms, p99_ms")
        result = self.measure(artifact, **options)
        measured = {"p50": result.p50_ms, "p90": result.p90_ms, "p99": result.p99_ms}
        over = [
            f"{name} {measured[name]:.3f} ms > budget {limit:g} ms"
            for name, limit in budgets.items()
            if limit is not None and measured[name] > limit
        ]
        if over:
            pytest.fail(f"{Path(artifact).name} on {result.runtime}: " + "; ".join(over))
        return result

    def assert_no_regression(
        self,
        artifact: str | Path,
        *,
        baseline: str | Path,
        threshold_pct: float = 5.0,
        **options: Any,
    ) -> Comparison:
        """Fail when the artifact is slower than the matching row of a stored baseline."""
        config = CompareConfig(threshold_pct=threshold_pct)
        result = self.measure(artifact, min_samples=config.min_samples, **options)
        document = load_baseline(baseline, root=self.baselines)
        row = _matching_row(document, result, baseline=str(baseline))
        comparison = compare_samples(row.samples_ms, result.samples_ms, config=config)
        if comparison.verdict is Verdict.INCONCLUSIVE:
            # never a silent pass: an inconclusive check has checked nothing
            if comparison.n_baseline < config.min_samples:
                short, fix = f"{comparison.n_baseline} baseline", "re-save the baseline longer"
            else:
                short, fix = str(comparison.n_candidate), "raise --torchship-min-time"
            pytest.fail(
                f"{Path(artifact).name} vs baseline {baseline}: inconclusive: {short} samples, "
                f"need {config.min_samples}; {fix}"
            )
        if comparison.regressed:
            pytest.fail(
                f"{Path(artifact).name} on {result.runtime} is slower than baseline {baseline}: "
                f"p50 {comparison.baseline_p50:.3f} -> {comparison.candidate_p50:.3f} ms "
                f"({comparison.change_pct:+.1f}%, CI {comparison.ci_low:.3f}-"
                f"{comparison.ci_high:.3f}, threshold {threshold_pct:g}%)"
            )
        return comparison


def _matching_row(document: BenchDocument, result: BenchResult, *, baseline: str) -> BenchResult:
    """The baseline row for `result`: same (runtime, precision, batch), and, when several rows
    have that, the same artifact file name (then the same path). pytest.fail when none or many."""
    wanted = (result.runtime, result.precision, result.batch)
    rows = [row for row in document.results if (row.runtime, row.precision, row.batch) == wanted]
    name = Path(result.artifact).name
    if len(rows) > 1:
        rows = [r for r in rows if PurePath(str(r.artifact)).name == name]
    if len(rows) > 1:
        rows = [r for r in rows if str(r.artifact) == result.artifact] or rows
    label = f"{result.runtime}/{result.precision}/batch {result.batch}"
    if not rows:
        pytest.fail(f"baseline {baseline}: no row for {name} on {label}")
    if len(rows) > 1:
        paths = ", ".join(str(r.artifact) for r in rows)
        pytest.fail(f"baseline {baseline}: several rows for {label} match: {paths}")
    return rows[0]


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("torchship", "torchship latency checks")
    group.addoption(
        "--torchship-min-time", type=float, default=0.5, metavar="S",
        help="timed seconds per latency measurement (default 0.5)",
    )  # fmt: skip
    group.addoption(
        "--torchship-baselines", default=None, metavar="DIR",
        help="baselines folder (default $TORCHSHIP_BASELINES or .torchship/baselines)",
    )  # fmt: skip


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "latency: a torchship latency budget or regression test")


@pytest.fixture
def torchship_latency(request: pytest.FixtureRequest) -> LatencyChecker:
    """Measure artifacts and assert budgets / no regression vs a stored baseline."""
    return LatencyChecker(
        min_time_s=request.config.getoption("--torchship-min-time"),
        baselines=request.config.getoption("--torchship-baselines"),
    )
