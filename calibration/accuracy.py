"""Accuracy of a quantized model against its FP32 source on eval data.

With labels: top-1/top-5 of both and the top-1 drop in percentage points. Without labels:
agreement with FP32 (top-1 match rate, mean cosine similarity); the "drop" is then the share of
samples whose top-1 changed, in points.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from torchship.calibration.data import DataSet
from torchship.errors import CalibrationError

__all__ = ["EvalOutputs", "Accuracy", "run_eval", "compare_accuracy"]


@dataclass(frozen=True)
class EvalOutputs:
    """The first output of a model over an eval set (rows = samples), and the labels if any."""

    logits: np.ndarray
    labels: np.ndarray | None


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
    """Run `model_path` on every eval batch with ORT (CPU); keeps only the first output."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if threads:
        options.intra_op_num_threads = threads
    session = onnxruntime.InferenceSession(
        str(model_path), sess_options=options, providers=["CPUExecutionProvider"]
    )
    first = session.get_outputs()[0].name
    rows, labels = [], []
    for batch in data.batches():
        out = np.asarray(session.run([first], batch.feeds)[0])
        rows.append(out.reshape(out.shape[0], -1) if out.ndim != 2 else out)
        if batch.labels is not None:
            labels.append(batch.labels)
    del session
    logits = np.concatenate(rows).astype(np.float32)
    if labels and len(labels) != len(rows):
        raise CalibrationError(f"{data.name}: only some files carry {'labels'!r}")
    return EvalOutputs(logits, np.concatenate(labels) if labels else None)


def compare_accuracy(candidate: EvalOutputs, reference: EvalOutputs) -> Accuracy:
    """Accuracy of `candidate` relative to the FP32 `reference` on the same eval set."""
    a, b = candidate.logits, reference.logits
    agreement = float(np.mean(a.argmax(axis=1) == b.argmax(axis=1)))
    cosine = _mean_cosine(a, b)
    labels = reference.labels
    if labels is None:
        return Accuracy("agreement", len(a), 100.0 * (1.0 - agreement), agreement, cosine)
    if labels.shape[0] != a.shape[0]:
        raise CalibrationError(
            f"eval data: {labels.shape[0]} labels for {a.shape[0]} samples; they must match"
        )
    top1, ref1 = _topk(a, labels, 1), _topk(b, labels, 1)
    top5 = _topk(a, labels, 5) if a.shape[1] > 5 else None
    ref5 = _topk(b, labels, 5) if a.shape[1] > 5 else None
    return Accuracy(
        "labels", len(a), 100.0 * (ref1 - top1), agreement, cosine, ref1, top1, ref5, top5
    )


def _topk(logits: np.ndarray, labels: np.ndarray, k: int) -> float:
    top = np.argpartition(-logits, kth=min(k, logits.shape[1]) - 1, axis=1)[:, :k]
    return float(np.mean((top == labels[:, None]).any(axis=1)))


def _mean_cosine(a: np.ndarray, b: np.ndarray) -> float:
    num = np.sum(a.astype(np.float64) * b, axis=1)
    den = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    cos = np.where(den > 0, num / np.maximum(den, 1e-30), 1.0)
    return float(np.mean(cos))
