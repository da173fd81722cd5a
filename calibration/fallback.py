"""Accuracy-budget fallback: keep the fewest, most sensitive nodes in FP32, in bounded time.

Nodes are ranked once (`calibration/sensitivity.py`: the noise each adds, from one pass of the
fully quantized model), then the loop bisects k, the number of top-ranked nodes kept in FP32:
initial + feasibility + log2(n) builds, not one build per node (one per node cost 110 s on a
MiniLM encoder and 435 s on ConvNeXt-Tiny; docs/design.md, "The accuracy fallback"). It stops
early when even the most FP32 it may keep misses the budget, and at `max_time_s`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from torchship.calibration.accuracy import Accuracy
from torchship.calibration.metrics import Budget, Metric

__all__ = ["Trial", "FallbackResult", "fallback_loop", "DEFAULT_MAX_FALLBACK_TIME_S"]

log = logging.getLogger(__name__)

#: --max-fallback-time default: a few dozen builds of a BERT-base-sized model on 2 cores.
DEFAULT_MAX_FALLBACK_TIME_S = 120.0

#: evaluate(excluded node names) -> accuracy of the model quantized without them
Evaluate = Callable[[tuple[str, ...]], Accuracy]
#: rank() -> node name -> sensitivity (higher: INT8 hurts it more); called at most once
Rank = Callable[[], Mapping[str, float]]


@dataclass(frozen=True)
class Trial:
    """One configuration built and scored: `kept_fp32` nodes in FP32, the budget's value."""

    what: str
    kept_fp32: int
    value: float
    passed: bool
    seconds: float

    def to_dict(self) -> dict:
        return {
            "what": self.what,
            "kept_fp32": self.kept_fp32,
            "value": round(self.value, 6),
            "passed": self.passed,
            "seconds": round(self.seconds, 3),
        }


@dataclass(frozen=True)
class FallbackResult:
    """The configuration kept (the smallest passing one found, else the lowest loss seen)."""

    excluded: tuple[str, ...]
    accuracy: Accuracy
    passed: bool
    initial: Accuracy
    budget: Budget | None = None
    candidates: int = 0
    trials: tuple[Trial, ...] = ()
    stopped: str = ""
    sensitivity: dict[str, float] = field(default_factory=dict)
    elapsed_s: float = 0.0
    max_time_s: float | None = None
    #: The candidate nodes' names (`excluded` may hold other nodes too: the latency search
    #: keeps whole regions, activations included, in FP32).
    names: tuple[str, ...] = ()

    @property
    def all_fp32(self) -> bool:
        """Every candidate node ended in FP32: nothing of the model is quantized."""
        if self.names:
            return set(self.names) <= set(self.excluded)
        return self.candidates > 0 and len(self.excluded) >= self.candidates

    def to_dict(self) -> dict:
        return {
            "excluded_nodes": list(self.excluded),
            "candidates": self.candidates,
            "all_fp32": self.all_fp32,
            "initial_drop": round(self.initial.drop, 4),
            "final_drop": round(self.accuracy.drop, 4),
            "initial_value": round(self.initial.budget_value, 6),
            "final_value": round(self.accuracy.budget_value, 6),
            "passed": self.passed,
            "tried": len(self.trials),
            "stopped": self.stopped,
            "elapsed_s": round(self.elapsed_s, 3),
            "max_time_s": self.max_time_s,
            "trials": [t.to_dict() for t in self.trials],
            "sensitivity": {k: round(v, 8) for k, v in self.sensitivity.items()},
        }


class _Search:
    """The trials of one fallback run, with its clock."""

    def __init__(self, evaluate: Evaluate, budget: Budget | None, max_time_s, clock) -> None:
        self.evaluate, self.budget, self.clock = evaluate, budget, clock
        self.max_time_s = max_time_s
        self.start = clock()
        self.trials: list[Trial] = []
        self.seen: list[tuple[tuple[str, ...], Accuracy]] = []

    def holds(self, accuracy: Accuracy) -> bool:
        if self.budget is None:  # the first trial decides it: its own metric, no limit given
            raise RuntimeError("fallback budget not set")
        return self.budget.holds(accuracy.budget_value)

    def trial(self, excluded: tuple[str, ...], what: str) -> tuple[Accuracy, bool]:
        began = self.clock()
        accuracy = self.evaluate(excluded)
        passed = self.holds(accuracy)
        self.trials.append(
            Trial(what, len(excluded), accuracy.budget_value, passed, self.clock() - began)
        )
        self.seen.append((excluded, accuracy))
        log.info("fallback: %s -> %s %.6g", what, accuracy.metric, accuracy.budget_value)
        return accuracy, passed

    def out_of_time(self) -> bool:
        return self.max_time_s is not None and self.clock() - self.start >= self.max_time_s

    def time_stop(self) -> str:
        return (
            f"stopped at the --max-fallback-time limit of {self.max_time_s:g} s after "
            f"{len(self.trials)} trials"
        )

    def best_seen(self) -> tuple[tuple[str, ...], Accuracy]:
        return min(self.seen, key=lambda item: (item[1].loss, len(item[0])))


def fallback_loop(
    candidates: Sequence[tuple[str, str]],
    evaluate: Evaluate,
    *,
    budget: Budget | None = None,
    max_drop: float | None = None,
    rank: Rank | None = None,
    max_excluded: int | None = None,
    max_time_s: float | None = DEFAULT_MAX_FALLBACK_TIME_S,
    clock: Callable[[], float] = time.monotonic,
) -> FallbackResult:
    """Quantize everything; when `budget` is missed, keep the k most sensitive `candidates`
    (name, op type) in FP32 with k found by bisection. `rank` orders them (default: the order
    given). `max_drop` alone means a points budget on the metric `evaluate` reports.

    Stops early, unpassed, when even `max_excluded` (default: all) nodes in FP32 miss the
    budget, and at `max_time_s` (the best passing configuration found so far, if any).
    """
    search = _Search(evaluate, budget, max_time_s, clock)
    initial = evaluate(())
    if search.budget is None:
        metric = Metric(initial.metric)
        search.budget = Budget(metric, 1.0 if max_drop is None else max_drop)
    search.seen.append(((), initial))
    passed = search.holds(initial)
    first = Trial("full INT8", 0, initial.budget_value, passed, clock() - search.start)
    search.trials.append(first)
    search.start = clock()  # the budget covers the fallback, not the first build
    names = [name for name, _ in candidates]
    limit = len(names) if max_excluded is None else min(max_excluded, len(names))

    def done(excluded, accuracy, ok, stopped, sensitivity=None) -> FallbackResult:
        return FallbackResult(
            tuple(excluded), accuracy, ok, initial, search.budget, len(names),
            tuple(search.trials), stopped, dict(sensitivity or {}), clock() - search.start,
            max_time_s, tuple(names),
        )  # fmt: skip

    if passed:
        return done((), initial, True, "full INT8 is within the budget")
    if not names:
        return done((), initial, False, "no node can be kept in FP32 (no candidates)")
    if limit == 0:
        return done((), initial, False, "--max-fp32-nodes 0: no node may be kept in FP32")
    order, sensitivity = names, {}
    if limit < len(names):  # which `limit` nodes to try needs the ranking first
        order, sensitivity = _ranked(names, rank)
    most = tuple(order[:limit])
    accuracy, ok = search.trial(most, f"{limit} of {len(names)} nodes in FP32")
    if not ok:
        cap = "all" if limit == len(names) else f"the {limit} most sensitive (--max-fp32-nodes)"
        stopped = (
            f"budget unreachable: even with {cap} of the {len(names)} candidate nodes in FP32 "
            f"{search.budget.metric.value} is {accuracy.budget_value:.6g}"
        )
        return done(*search.best_seen(), False, stopped, sensitivity)
    if search.out_of_time():
        return done(most, accuracy, True, search.time_stop(), sensitivity)
    if not sensitivity:
        order, sensitivity = _ranked(names, rank)
    low, high, best = 0, limit, (most, accuracy)
    stopped = ""
    while high - low > 1:
        if search.out_of_time():
            stopped = search.time_stop()
            break
        middle = (low + high) // 2
        excluded = tuple(order[:middle])
        accuracy, ok = search.trial(excluded, f"top {middle} in FP32")
        if ok:
            high, best = middle, (excluded, accuracy)
        else:
            low = middle
    if not stopped:
        stopped = (
            f"bisection: the {high} most sensitive of {len(names)} nodes in FP32 hold the "
            f"budget, {low} do not"
        )
    return done(*best, True, stopped, sensitivity)


def _ranked(names: list[str], rank: Rank | None) -> tuple[list[str], dict[str, float]]:
    """`names` most sensitive first (stable for ties), with the scores."""
    if rank is None:
        return list(names), {}
    scores = dict(rank())
    order = sorted(names, key=lambda n: -scores.get(n, float("-inf")))
    return order, {n: scores[n] for n in order if n in scores}
