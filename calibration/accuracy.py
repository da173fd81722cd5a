"""Accuracy of a quantized model against its FP32 source on eval data.

Every measure is computed for every output; the budget applies to the one that fits it
(`calibration/metrics.py`): top-1 against labels and its drop in percentage points, agreement
with FP32 (the share of samples whose top-1 changed is the "drop", in points), mean/min cosine
similarity, SQNR in dB and relative error.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

from torchship.artifact import Artifact, Format
from torchship.calibration.metrics import (
    BUDGET_TOLERANCE,
    Metric,
    relative_error,
    sqnr_db,
    vector_cosines,
)
from torchship.data import DataSet
from torchship.errors import CalibrationError
from torchship.runtimes.evaluate import EvalOutputs, evaluate

__all__ = ["Accuracy", "run_eval", "compare_accuracy", "near_chance_warning", "within_budget"]

#: FP32 top-1 within this many points of chance (1 / classes) is worth a warning.
_CHANCE_MARGIN = 0.05


def within_budget(drop: float, max_drop: float) -> bool:
    return drop <= max_drop + BUDGET_TOLERANCE


@dataclass(frozen=True)
class Accuracy:
    """How a candidate compares with FP32; `drop` is in percentage points (top-1 against the
    labels with labels, else the share of samples whose top-1 changed). `metric` names the
    measure the budget reads (`value`); the others are reported beside it."""

    mode: str  # "labels" or "agreement"
    samples: int
    drop: float
    agreement: float
    cosine: float
    fp32_top1: float | None = None
    top1: float | None = None
    fp32_top5: float | None = None
    top5: float | None = None
    metric: str = ""  # default: "top1" with labels, else "agreement"
    min_cosine: float | None = None
    sqnr_db: float | None = None
    relerr: float | None = None

    def __post_init__(self) -> None:
        if not self.metric:
            object.__setattr__(self, "metric", "top1" if self.mode == "labels" else "agreement")

    @property
    def value(self) -> float:
        """The metric itself: top-1 or agreement (fractions), mean cosine, dB, relative error."""
        return {
            "top1": self.top1,
            "agreement": self.agreement,
            "cosine": self.cosine,
            "sqnr": self.sqnr_db,
            "relerr": self.relerr,
        }[self.metric]

    @property
    def budget_value(self) -> float:
        """What the budget limits: drop points for top1/agreement, else `value`."""
        if self.metric == "top1":
            return self.drop
        if self.metric == "agreement":
            return 100.0 * (1.0 - self.agreement)
        return self.value

    @property
    def loss(self) -> float:
        """Lower is better, >= 0: points (top1, agreement), 1 - mean cosine, the noise-to-signal
        power ratio (sqnr) or the relative error; compares candidates under one metric."""
        if self.metric == "cosine":
            return max(0.0, 1.0 - self.cosine)
        if self.metric == "sqnr":
            return float(10.0 ** (-self.sqnr_db / 10.0))
        return max(0.0, self.budget_value)

    def with_metric(self, metric: Metric | str) -> Accuracy:
        return replace(self, metric=Metric(metric).value)

    def to_dict(self) -> dict:
        out = {k: (round(v, 6) if isinstance(v, float) else v) for k, v in asdict(self).items()}
        out["value"] = round(self.value, 6)
        out["loss"] = round(self.loss, 8)
        return out

    def summary(self) -> str:
        n = f"{self.samples} samples"
        if self.metric == "top1":
            return (
                f"top-1 {100 * self.top1:.2f}% vs FP32 {100 * self.fp32_top1:.2f}% "
                f"(drop {self.drop:.2f} points, {n})"
            )
        if self.metric == "agreement":
            return (
                f"top-1 agreement with FP32 {100 * self.agreement:.2f}% (drop "
                f"{self.budget_value:.2f} points), cosine {self.cosine:.5f}, {n}"
            )
        if self.metric == "cosine":
            return (
                f"cosine with FP32 mean {self.cosine:.5f}, min {self.min_cosine:.5f}, "
                f"SQNR {self.sqnr_db:.1f} dB, {n}"
            )
        return f"SQNR {self.sqnr_db:.1f} dB, relative error {self.relerr:.4g}, {n}"


def run_eval(model_path: Path, data: DataSet, *, threads: int | None = None) -> EvalOutputs:
    """The first output of the ONNX model at `model_path` on every eval batch, on `ort-cpu`."""
    artifact = Artifact(Path(model_path), Format.ONNX, data.inputs, ())
    return evaluate(artifact, data, runtime="ort-cpu", threads=threads)


def compare_accuracy(
    candidate: EvalOutputs, reference: EvalOutputs, *, metric: Metric | str | None = None
) -> Accuracy:
    """Accuracy of `candidate` relative to the FP32 `reference` on the same eval set, read
    through `metric` (default: top1 with labels, else agreement).

    Drops come from integer sample counts, so 4 misses in 400 samples is exactly 1.0 point.
    """
    _check_same_data(candidate, reference)
    a, b = candidate.logits, reference.logits
    n = len(a)
    shape = reference.sample_shape or tuple(b.shape[1:])
    agree = _agreeing_samples(a, b, shape)
    agreement = agree / n
    cosines = vector_cosines(a, b, shape)
    measures = {
        "cosine": float(np.mean(cosines)),
        "min_cosine": float(np.min(cosines)),
        "sqnr_db": sqnr_db(a, b),
        "relerr": relative_error(a, b),
        "metric": Metric(metric).value if metric else "",
    }
    labels = reference.labels
    if labels is None:
        return Accuracy("agreement", n, 100.0 * (n - agree) / n, agreement, **measures)
    if labels.shape[0] != a.shape[0]:
        raise CalibrationError(
            f"eval data: {labels.shape[0]} labels for {a.shape[0]} samples; they must match"
        )
    hits1, ref_hits1 = _topk_hits(a, labels, 1), _topk_hits(b, labels, 1)
    top5 = _topk_hits(a, labels, 5) / n if a.shape[1] > 5 else None
    ref5 = _topk_hits(b, labels, 5) / n if a.shape[1] > 5 else None
    drop = 100.0 * (ref_hits1 - hits1) / n
    return Accuracy(
        "labels", n, drop, agreement, fp32_top1=ref_hits1 / n, top1=hits1 / n, fp32_top5=ref5,
        top5=top5, **measures,
    )  # fmt: skip


def _agreeing_samples(a: np.ndarray, b: np.ndarray, shape: tuple[int, ...]) -> int:
    """Samples whose arg-max matches; for 3-D outputs ([samples, tokens, classes]) a sample
    agrees when every position's arg-max does."""
    if len(shape) == 2:
        same = a.reshape(len(a), *shape).argmax(axis=2) == b.reshape(len(b), *shape).argmax(axis=2)
        return int(np.count_nonzero(same.all(axis=1)))
    return int(np.count_nonzero(a.argmax(axis=1) == b.argmax(axis=1)))


def near_chance_warning(reference: EvalOutputs) -> str | None:
    """A warning when FP32 top-1 on the labels is barely above chance: the labels (order,
    base, file) are more likely wrong than the model."""
    if reference.labels is None or not len(reference.logits):
        return None
    classes = reference.logits.shape[1]
    chance = 1.0 / classes
    top1 = _topk_hits(reference.logits, reference.labels, 1) / len(reference.logits)
    if top1 >= chance + _CHANCE_MARGIN:
        return None
    return (
        f"FP32 top-1 on the eval labels is {100 * top1:.1f}%, near chance ({100 * chance:.1f}% "
        f"for {classes} classes): are the labels 0-based class indices in the model's order?"
    )


def _check_same_data(candidate: EvalOutputs, reference: EvalOutputs) -> None:
    if candidate.sha256 and reference.sha256 and candidate.sha256 != reference.sha256:
        raise CalibrationError(
            f"{reference.source or 'eval data'}: eval data changed between passes: make the "
            f"data function deterministic (sha256 {reference.sha256[:12]}... in the FP32 pass, "
            f"{candidate.sha256[:12]}... in a later one)"
        )


def _topk_hits(logits: np.ndarray, labels: np.ndarray, k: int) -> int:
    top = np.argpartition(-logits, kth=min(k, logits.shape[1]) - 1, axis=1)[:, :k]
    return int(np.count_nonzero((top == labels[:, None]).any(axis=1)))
