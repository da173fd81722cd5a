"""The gates step: accuracy drop, latency, speedup and no regression vs a stored baseline."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from torchship.artifact import Format
from torchship.pipeline.results import BundleRow, GateResult
from torchship.pipeline.schema import GatesSection
from torchship.pipeline.step import PipelineState, Step, StepResult
from torchship.regression.documents import compare_documents
from torchship.regression.stats import CompareConfig
from torchship.runtimes.bench import BenchDocument

__all__ = ["GatesStep", "baseline_gate"]

_EAGER = Format.EAGER.value


@dataclass(frozen=True)
class GatesStep(Step):
    """Judge the rows against `gates`; latency gates judge shipped artifacts, not eager."""

    name = "gates"

    gates: GatesSection
    #: the batch `min_speedup` is judged at (the first one benchmarked)
    first_batch: int

    def run(self, state: PipelineState) -> StepResult:
        return StepResult(gates=tuple(self.judge(state.rows, state.bench, state.baseline)))

    def judge(
        self, rows: Sequence[BundleRow], bench: BenchDocument | None, baseline: BenchDocument | None
    ) -> list[GateResult]:
        gates = self.gates
        out = []
        if gates.max_accuracy_drop is not None:
            out.append(_accuracy_gate(rows, gates.max_accuracy_drop))
        shipped = [r for r in rows if r.format != _EAGER] or list(rows)
        if gates.max_p90_ms is not None:
            out.append(_p90_gate(shipped, gates.max_p90_ms))
        if gates.min_speedup is not None:
            out.append(_speedup_gate(shipped, gates.min_speedup, self.first_batch))
        if baseline is not None:
            out.append(baseline_gate(gates, bench, baseline))
        return out


def _accuracy_gate(rows: Sequence[BundleRow], max_drop: float) -> GateResult:
    reference = next((r.accuracy for r in rows if r.format == _EAGER), None)
    scored = [r for r in rows if r.format != _EAGER and r.accuracy is not None]
    if reference is None or not scored:
        return GateResult("max_accuracy_drop", False, "no eval data to measure accuracy with")
    worst = min(scored, key=lambda r: r.accuracy)
    drop = (reference - worst.accuracy) * 100
    detail = f"largest drop {drop:.2f} points ({worst.artifact}), budget {max_drop:g}"
    return GateResult("max_accuracy_drop", drop <= max_drop, detail)


def _p90_gate(shipped: Sequence[BundleRow], budget: float) -> GateResult:
    worst = max(shipped, key=lambda r: r.p90_ms)
    detail = (
        f"worst p90 {worst.p90_ms:.3f} ms ({worst.artifact} on {worst.runtime}, "
        f"batch {worst.batch}), budget {budget:g} ms"
    )
    return GateResult("max_p90_ms", worst.p90_ms <= budget, detail)


def _speedup_gate(shipped: Sequence[BundleRow], needed: float, batch: int) -> GateResult:
    best = max((r for r in shipped if r.batch == batch), key=lambda r: r.speedup_vs_eager)
    detail = (
        f"best speedup {best.speedup_vs_eager:.2f}x at batch {batch} ({best.artifact} "
        f"on {best.runtime}), needed {needed:g}x"
    )
    return GateResult("min_speedup", best.speedup_vs_eager >= needed, detail)


def baseline_gate(gates: GatesSection, bench: BenchDocument, baseline: BenchDocument) -> GateResult:
    """No row slower than in the baseline; an inconclusive comparison is not a pass."""
    result = compare_documents(
        baseline, bench, config=CompareConfig(threshold_pct=gates.threshold_pct)
    )
    slower = ", ".join(r.label for r in result.regressions)
    unsure = ", ".join(r.label for r in result.rows if r.verdict == "inconclusive")
    if slower:
        return GateResult("baseline", False, f"slower than baseline {gates.baseline!r}: {slower}")
    if unsure:  # too few samples to tell: not a pass
        detail = f"inconclusive vs baseline {gates.baseline!r} ({unsure}): raise [bench] min_time_s"
        return GateResult("baseline", False, detail)
    return GateResult("baseline", result.passed, "no regression")
