"""The evaluator: the outputs, and accuracy, of any artifact on a data set through its Runner.

One path for every accuracy number torchship reports: quantize's FP32-vs-INT8 eval (ONNX on
`ort-cpu`), pruning's accuracy (the nn.Module as an eager artifact on `torch`) and the top-1 of
ship and pipeline bundles (any format on any runtime, engines included). Batches come from the
data readers and labels follow the one label rule of `torchship.data` (docs/design.md, "The
evaluator").
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from torchship.artifact import Artifact
from torchship.data import (
    LABELS_KEY,
    Batch,
    DataSet,
    ShortBatch,
    check_labels,
    open_data,
    top1_accuracy,
)
from torchship.errors import CalibrationError, ConfigError, ModelLoadError, first_line
from torchship.runtimes.base import Runner, default_runtime_for, get_runner

__all__ = ["DataLike", "EvalOutputs", "evaluate", "evaluate_top1"]

DataLike = str | Path | Mapping[str, np.ndarray] | DataSet


@dataclass(frozen=True)
class EvalOutputs:
    """The first output of a model over an eval set (rows = samples), the labels if any, and
    the sha256 of the samples that pass fed (two passes must see the same data)."""

    logits: np.ndarray
    labels: np.ndarray | None
    sha256: str = ""
    source: str = ""
    #: The output's shape per sample before it was flattened into rows (e.g. (tokens, hidden)).
    sample_shape: tuple[int, ...] = ()

    def top1(self) -> float | None:
        """Fraction of samples whose arg-max is their label; None without labels."""
        return None if self.labels is None else top1_accuracy(self.logits, self.labels)


def evaluate(
    artifact: Artifact,
    data: DataLike,
    *,
    runtime: str | None = None,
    threads: int | None = None,
    batch_size: int | None = None,
) -> EvalOutputs:
    """The first output of `artifact` on every sample of `data`, run through `runtime` (default:
    the one for its format), as float32 rows of [samples, -1].

    Batches are the data readers', checked against the artifact's inputs; `batch_size` applies at
    a dynamic batch axis (default: the readers'), and at a fixed one the last batch is padded and
    the padding rows' outputs are cut off. Labels, when the data has them, must be class ids of
    the output's width. A batch the runtime fails on is a CalibrationError naming the batch and
    the model.
    """
    dataset = _dataset(data, artifact, batch_size)
    rows, labels, shape = [], [], ()
    runner_cls = get_runner(runtime or default_runtime_for(artifact.format))
    with runner_cls(artifact, threads=threads) as runner:
        for batch in dataset.batches(short=ShortBatch.PAD):
            output, shape = _first_output(runner, batch)
            rows.append(output[: batch.samples])
            if batch.labels is not None:
                classes = output.shape[1]
                labels.append(check_labels(batch.labels, what=batch.origin, classes=classes))
    if labels and len(labels) != len(rows):
        raise CalibrationError(f"{dataset.name}: only some files carry {LABELS_KEY!r}")
    logits = np.concatenate(rows).astype(np.float32, copy=False)
    return EvalOutputs(
        logits, np.concatenate(labels) if labels else None, dataset.sha256, dataset.name, shape
    )


def evaluate_top1(
    runtime: str, artifact: Artifact, feeds: Mapping[str, np.ndarray], labels: np.ndarray
) -> float:
    """Top-1 accuracy of `artifact` run through `runtime` on a labelled set."""
    return evaluate(artifact, {**feeds, LABELS_KEY: labels}, runtime=runtime).top1()


def _dataset(data: DataLike, artifact: Artifact, batch_size: int | None) -> DataSet:
    if isinstance(data, DataSet):
        return data
    dataset = open_data(data, inputs=artifact.inputs)
    if batch_size is None or dataset.fixed_batch:
        return dataset  # a fixed batch axis sets the batch size itself
    return open_data(data, inputs=artifact.inputs, batch_size=batch_size)


def _first_output(runner: Runner, batch: Batch) -> tuple[np.ndarray, tuple[int, ...]]:
    try:
        outputs = runner.infer(batch.feeds)
    except (ConfigError, ModelLoadError) as exc:
        cause = exc.__cause__ or exc  # the backend's own error, which says what went wrong
        raise CalibrationError(
            f"{batch.origin}: {runner.artifact.path.name} failed on this batch: "
            f"{type(cause).__name__}: {first_line(cause)}"
        ) from exc
    output = np.asarray(next(iter(outputs.values())))
    if not output.size:  # nothing to score: refuse it here, not in argmax
        raise CalibrationError(
            f"{batch.origin}: {runner.artifact.path.name} returned an empty output "
            f"{list(output.shape)}; accuracy needs values"
        )
    rows = output if output.ndim == 2 else output.reshape(output.shape[0], -1)
    return rows, tuple(output.shape[1:])
