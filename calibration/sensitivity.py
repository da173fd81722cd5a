"""Accuracy-budget fallback: find the nodes INT8 hurts most and keep them in FP32, greedily."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from torchship.calibration.accuracy import Accuracy, within_budget

__all__ = ["FallbackStep", "FallbackResult", "fallback_loop"]

log = logging.getLogger(__name__)

#: evaluate(excluded node names) -> accuracy of the model quantized without them
Evaluate = Callable[[tuple[str, ...]], Accuracy]


@dataclass(frozen=True)
class FallbackStep:
    """One node moved back to FP32 and what that changed (drops in percentage points)."""

    node: str
    op_type: str
    alone_drop: float
    drop_before: float
    drop_after: float

    @property
    def gained(self) -> float:
        return self.drop_before - self.drop_after

    def to_dict(self) -> dict:
        return {
            "node": self.node,
            "op_type": self.op_type,
            "drop_when_only_this_is_fp32": round(self.alone_drop, 4),
            "drop_before": round(self.drop_before, 4),
            "drop_after": round(self.drop_after, 4),
            "gained_points": round(self.gained, 4),
        }


@dataclass(frozen=True)
class FallbackResult:
    excluded: tuple[str, ...]
    accuracy: Accuracy
    passed: bool
    initial: Accuracy
    steps: tuple[FallbackStep, ...] = ()
    sensitivity: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {
            "excluded_nodes": list(self.excluded),
            "initial_drop": round(self.initial.drop, 4),
            "final_drop": round(self.accuracy.drop, 4),
            "passed": self.passed,
            "steps": [s.to_dict() for s in self.steps],
            "sensitivity_drop_if_fp32": {k: round(v, 4) for k, v in self.sensitivity.items()},
        }


def fallback_loop(
    candidates: Sequence[tuple[str, str]],
    evaluate: Evaluate,
    *,
    max_drop: float,
    max_excluded: int | None = None,
) -> FallbackResult:
    """Quantize everything; if the drop exceeds `max_drop`, rank `candidates` (name, op type) by
    the drop left when only that node stays FP32, then exclude them in that order until the
    budget holds. Returns the best configuration seen (the first within budget, else the
    lowest drop)."""
    initial = evaluate(())
    if within_budget(initial.drop, max_drop) or not candidates:
        return FallbackResult((), initial, within_budget(initial.drop, max_drop), initial)
    alone = {name: evaluate((name,)).drop for name, _ in candidates}
    order = sorted(candidates, key=lambda c: alone[c[0]])
    limit = max_excluded if max_excluded is not None else len(order)
    excluded: list[str] = []
    steps: list[FallbackStep] = []
    best = ((), initial)
    current = initial
    for name, op_type in order[:limit]:
        excluded.append(name)
        accuracy = evaluate(tuple(excluded))
        steps.append(FallbackStep(name, op_type, alone[name], current.drop, accuracy.drop))
        log.info("kept %s in FP32: drop %.3f -> %.3f points", name, current.drop, accuracy.drop)
        current = accuracy
        if accuracy.drop < best[1].drop:
            best = (tuple(excluded), accuracy)
        if within_budget(accuracy.drop, max_drop):
            break
    passed = within_budget(best[1].drop, max_drop)
    kept = steps[: len(best[0])]
    return FallbackResult(best[0], best[1], passed, initial, tuple(kept), alone)
