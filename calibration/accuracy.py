"""Accuracy of a quantized model against its FP32 source on eval data.

With labels: top-1/top-5 of both and the top-1 drop in percentage points. Without labels:
agreement with FP32 (top-1 match rate, mean cosine similarity); the "drop" is then the share of
samples whose top-1 changed, in points.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from torchship.artifact import Artifact, Format
from torchship.data import DataSet
from torchship.errors import CalibrationError
from torchship.runtimes.evaluate import EvalOutputs, evaluate

__all__ = ["Accuracy", "run_eval", "compare_accuracy", "near_chance_warning"]

#: Slack when comparing a drop with its budget: 4 of 400 samples is a 1.0-point drop, exactly.
BUDGET_TOLERANCE = 1e-9
#: FP32 top-1 within this many points of chance (1 / classes) is worth a warning.
_CHANCE_MARGIN = 0.05


def within_budget(drop: float, max_drop: float) -> bool:
    return drop <= max_drop + BUDGET_TOLERANCE


@dataclass(frozen=True)
class Accuracy:
    """How a candidate compares with FP32; `drop` is in percentage points."""

    mode: str  # "labels" or "agreement"
    samples: int
    drop: float
    agreement: float
    cosine: float
    fp32_top1: float | None = None
    top1: float | None = None
    fp32_top5: float | None = None
    top5: float | None = None

    def to_dict(self) -> dict:
        return {k: (round(v, 6) if isinstance(v, float) else v) for k, v in asdict(self).items()}

    def summary(self) -> str:
        if self.mode == "labels":
            return (
                f"top-1 {100 * self.top1:.2f}% vs FP32 {100 * self.fp32_top1:.2f}% "
                f"(drop {self.drop:.2f} points, {self.samples} samples)"
            )
        return (
            f"top-1 agreement with FP32 {100 * self.agreement:.2f}%, cosine {self.cosine:.5f} "
            f"(drop {self.drop:.2f} points, {self.samples} samples)"
        )


def run_eval(model_path: Path, data: DataSet, *, threads: int | None = None) -> EvalOutputs:
    """The first output of the ONNX model at `model_path` on every eval batch, on `ort-cpu`."""
    artifact = Artifact(Path(model_path), Format.ONNX, data.inputs, ())
    return evaluate(artifact, data, runtime="ort-cpu", threads=threads)


def compare_accuracy(candidate: EvalOutputs, reference: EvalOutputs) -> Accuracy:
    """Accuracy of `candidate` relative to the FP32 `reference` on the same eval set.

    Drops come from integer sample counts, so 4 misses in 400 samples is exactly 1.0 point.
    """
    _check_same_data(candidate, reference)
    a, b = candidate.logits, reference.logits
    n = len(a)
    agree = int(np.count_nonzero(a.argmax(axis=1) == b.argmax(axis=1)))
    agreement = agree / n
    cosine = _mean_cosine(a, b)
    labels = reference.labels
    if labels is None:
        return Accuracy("agreement", n, 100.0 * (n - agree) / n, agreement, cosine)
    if labels.shape[0] != a.shape[0]:
        raise CalibrationError(
            f"eval data: {labels.shape[0]} labels for {a.shape[0]} samples; they must match"
        )
    hits1, ref_hits1 = _topk_hits(a, labels, 1), _topk_hits(b, labels, 1)
    top5 = _topk_hits(a, labels, 5) / n if a.shape[1] > 5 else None
    ref5 = _topk_hits(b, labels, 5) / n if a.shape[1] > 5 else None
    drop = 100.0 * (ref_hits1 - hits1) / n
    return Accuracy(
        "labels", n, drop, agreement, cosine, ref_hits1 / n, hits1 / n, ref5, top5
    )  # fmt: skip


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


def _mean_cosine(a: np.ndarray, b: np.ndarray) -> float:
    num = np.sum(a.astype(np.float64) * b, axis=1)
    den = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    cos = np.where(den > 0, num / np.maximum(den, 1e-30), 1.0)
    return float(np.mean(cos))
