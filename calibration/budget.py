"""The accuracy budget of one quantization: metric choice, FP32 reference, bounded fallback.

`check_budget` is what `quantize` runs and what other searches call with their own `make`
(excluded node names -> a quantized ONNX file): it picks the metric that fits the output
(`calibration/metrics.py`), scores the fully quantized model and, when the budget is missed,
bisects over the sensitivity ranking (`calibration/fallback.py`). `nothing_quantized` names the
results that must not pass: no integer kernels, or every candidate node back in FP32.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from torchship.calibration.accuracy import Accuracy, compare_accuracy, run_eval
from torchship.calibration.fallback import DEFAULT_MAX_FALLBACK_TIME_S, FallbackResult
from torchship.calibration.inspect_int8 import OpCounts
from torchship.calibration.metrics import Budget, Metric, MetricChoice, choose_metric, output_facts
from torchship.calibration.sensitivity import fallback_loop, node_sensitivity
from torchship.data import DataSet
from torchship.errors import ConfigError
from torchship.runtimes.evaluate import EvalOutputs

__all__ = ["BudgetCheck", "BudgetOptions", "BudgetOutcome", "check_budget", "nothing_quantized"]

log = logging.getLogger(__name__)

Make = Callable[[tuple[str, ...]], Path]


@dataclass(frozen=True)
class BudgetOptions:
    """The metric (None or "auto": chosen from the output) and its limits; None = default."""

    metric: str | None = None
    max_drop: float | None = None  # top1 / agreement, percentage points (default 1.0)
    min_cosine: float | None = None  # cosine, mean over the eval set (default 0.99)
    min_sqnr: float | None = None  # sqnr, dB (default 20)
    max_relerr: float | None = None  # relerr (default 0.1)
    max_excluded: int | None = None  # most nodes the fallback may keep in FP32
    max_time_s: float | None = DEFAULT_MAX_FALLBACK_TIME_S
    threads: int | None = None

    def __post_init__(self) -> None:
        if self.metric not in (None, "auto"):
            Metric.parse(self.metric)
        if self.max_drop is not None and not 0 <= self.max_drop <= 100:
            raise ConfigError(f"--max-drop {self.max_drop}: must be 0..100 percentage points")
        if self.min_cosine is not None and not -1 <= self.min_cosine <= 1:
            raise ConfigError(f"--min-cosine {self.min_cosine}: must be -1..1")
        if self.max_relerr is not None and not self.max_relerr >= 0:
            raise ConfigError(f"--max-relerr {self.max_relerr}: must be >= 0")
        if self.min_sqnr is not None and self.min_sqnr != self.min_sqnr:  # NaN
            raise ConfigError("--min-sqnr: must be a number of dB")
        if self.max_time_s is not None and not self.max_time_s > 0:
            raise ConfigError(f"--max-fallback-time {self.max_time_s}: must be > 0 seconds")

    def budget(self, metric: Metric) -> Budget:
        return Budget.for_metric(
            metric, max_drop=self.max_drop, min_cosine=self.min_cosine,
            min_sqnr=self.min_sqnr, max_relerr=self.max_relerr,
        )  # fmt: skip

    def unused_limits(self, metric: Metric) -> list[str]:
        """Flags given that the chosen metric does not read (worth a warning)."""
        unread = {m.option: m.flag for m in Metric if m.option != metric.option}
        return [flag for option, flag in unread.items() if getattr(self, option) is not None]


@dataclass(frozen=True)
class BudgetCheck:
    """The chosen metric and budget, the FP32 reference and `evaluate(excluded)`: what the
    fallback and the searches that run before or after it (PTQ algorithms, latency) judge by."""

    choice: MetricChoice
    budget: Budget
    reference: EvalOutputs
    evaluate: Callable[[tuple[str, ...]], Accuracy]

    def within(self, accuracy: Accuracy) -> bool:
        return self.budget.holds(accuracy.budget_value)

    def loss(self, accuracy: Accuracy) -> float:
        """Lower is better, whatever the metric (to pick the best of several candidates)."""
        value = accuracy.budget_value
        return -value if self.budget.higher_is_better else value

    def same(self) -> Accuracy:
        """FP32 against itself: the accuracy of shipping the FP32 model."""
        return compare_accuracy(self.reference, self.reference, metric=self.choice.metric)

    def report(self, accuracy: Accuracy) -> dict:
        """The report's `accuracy` dict: every measure, the metric, its value and budget."""
        return {
            **accuracy.to_dict(),
            "chosen_by": self.choice.reason,
            "budget": self.budget.limit,
            "budget_flag": self.budget.flag,
            "passed": self.within(accuracy),
        }


@dataclass(frozen=True)
class BudgetOutcome:
    result: FallbackResult
    check: BudgetCheck

    @property
    def choice(self) -> MetricChoice:
        return self.check.choice

    @property
    def budget(self) -> Budget:
        return self.check.budget

    @property
    def reference(self) -> EvalOutputs:
        return self.check.reference

    def report(self) -> dict:
        return {**self.check.report(self.result.accuracy), "passed": self.result.passed}


def check_budget(
    source: Path,
    make: Make,
    candidates: Sequence[tuple[str, str]],
    data: DataSet,
    *,
    options: BudgetOptions | None = None,
    ranking_model: Path | None = None,
    scratch: Path,
    task: str | None = None,
    before_fallback: Callable[[BudgetCheck], None] | None = None,
) -> BudgetOutcome:
    """Score `make(())` against the FP32 `source` on `data` and fall back while the budget is
    missed. `ranking_model` is the FP32 graph the candidates' names come from (default
    `source`); the fallback is skipped when `candidates` is empty. `before_fallback(check)`
    runs first (the PTQ algorithms choose what `make` builds there)."""
    opts = options or BudgetOptions()
    reference = run_eval(source, data, threads=opts.threads)
    choice = choose_metric(
        output_facts(source),
        sample_shape=reference.sample_shape,
        has_labels=reference.labels is not None,
        task=task,
        override=opts.metric,
    )
    budget = opts.budget(choice.metric)
    log.info("accuracy metric %s (%s), budget: %s", choice.metric.value, choice.reason, budget)

    def evaluate(excluded: tuple[str, ...]) -> Accuracy:
        outputs = run_eval(make(excluded), data, threads=opts.threads)
        return compare_accuracy(outputs, reference, metric=choice.metric)

    def rank() -> dict[str, float]:
        names = [name for name, _ in candidates]
        return node_sensitivity(
            ranking_model or source, make(()), names, data, scratch=scratch, threads=opts.threads
        )

    check = BudgetCheck(choice, budget, reference, evaluate)
    if before_fallback is not None:
        before_fallback(check)
    result = fallback_loop(
        candidates, evaluate, budget=budget, rank=rank,
        max_excluded=opts.max_excluded, max_time_s=opts.max_time_s,
    )  # fmt: skip
    return BudgetOutcome(result, check)


def nothing_quantized(counts: OpCounts, result: FallbackResult | None) -> str | None:
    """Why an INT8 result holds no INT8 (a failure, not a pass), with what to try; else None."""
    if result is not None and result.all_fp32:
        return (
            f"the accuracy fallback kept all {result.candidates} quantizable nodes in FP32: the "
            f"artifact is an FP32 model ({result.stopped}); try a metric that fits the output "
            "(--metric), real --eval data, a looser budget, or --method entropy/percentile"
        )
    if counts.integer == 0:
        return (
            f"no integer kernels after ORT optimization: the INT8 file computes in float "
            f"({counts.float_compute} float compute ops, {counts.qdq} Q/DQ left); try --mode "
            "static with --calib data (convolutions), --mode dynamic (MatMul/Gemm models), or a "
            "--target preset for this CPU"
        )
    return None
