"""Accuracy of a quantized model against its FP32 source on eval data.

With labels: top-1/top-5 of both and the top-1 drop in percentage points. Without labels:
agreement with FP32 (top-1 match rate, mean cosine similarity); the "drop" is then the share of
samples whose top-1 changed, in points.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from torchship.data import Batch, DataSet, ShortBatch, check_label_range
from torchship.errors import CalibrationError, ModelLoadError, first_line
from torchship.interrupts import reraise_interrupt

__all__ = ["EvalOutputs", "Accuracy", "run_eval", "compare_accuracy", "near_chance_warning"]

#: Slack when comparing a drop with its budget: 4 of 400 samples is a 1.0-point drop, exactly.
BUDGET_TOLERANCE = 1e-9
#: FP32 top-1 within this many points of chance (1 / classes) is worth a warning.
_CHANCE_MARGIN = 0.05


def within_budget(drop: float, max_drop: float) -> bool:
    return drop <= max_drop + BUDGET_TOLERANCE


@dataclass(frozen=True)
class EvalOutputs:
    """The first output of a model over an eval set (rows = samples), the labels if any, and
    the sha256 of the samples that pass fed (two passes must see the same data)."""

    logits: np.ndarray
    labels: np.ndarray | None
    sha256: str = ""
    source: str = ""


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
    try:
        session = onnxruntime.InferenceSession(
            str(model_path), sess_options=options, providers=["CPUExecutionProvider"]
        )
    except Exception as exc:  # ORT's own types; a quantized graph ORT made may not load either
        reraise_interrupt(exc)
        reason = first_line(exc)
        raise ModelLoadError(f"{model_path}: onnxruntime cannot load it ({reason})") from exc
    first = session.get_outputs()[0].name
    rows, labels = [], []
    for batch in data.batches(short=ShortBatch.PAD):  # padding rows are cut from the outputs
        out = _run_batch(session, first, batch, Path(model_path).name)
        out = out.reshape(out.shape[0], -1) if out.ndim != 2 else out
        if not out.size:  # nothing to score: refuse it here, not in argmax
            raise CalibrationError(f"{batch.origin}: {Path(model_path).name} returned an empty "
                                   f"output {list(out.shape)}; accuracy needs values")  # fmt: skip
        rows.append(out[: batch.samples])
        if batch.labels is not None:
            check_label_range(batch.labels, out.shape[1], what=batch.origin)
            labels.append(batch.labels)
    del session
    logits = np.concatenate(rows).astype(np.float32)
    if labels and len(labels) != len(rows):
        raise CalibrationError(f"{data.name}: only some files carry {'labels'!r}")
    return EvalOutputs(logits, np.concatenate(labels) if labels else None, data.sha256, data.name)


def _run_batch(session, output: str, batch: Batch, model_name: str) -> np.ndarray:
    try:
        return np.asarray(session.run([output], batch.feeds)[0])
    except Exception as exc:  # onnxruntime raises its own exception types
        lines = str(exc).strip().splitlines()
        raise CalibrationError(
            f"{batch.origin}: {model_name} failed on this batch: {type(exc).__name__}: "
            f"{lines[0] if lines else ''}"
        ) from exc


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
