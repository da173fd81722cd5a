"""Holding any artifact of a torch model to an accuracy budget against FP32 eager.

The metric is chosen as quantize chooses it (`calibration/metrics.py::choose_metric`: `--metric`,
the task recorded with the model, labels, the first output's name, shape and head), from facts
the torch module gives: its output name, rank, and the layer that made it. The reference is
eager PyTorch's first output on the eval data; candidates' outputs come from the evaluator and
are compared through `compare_accuracy` (docs/design.md, "Accuracy measures").
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch

from torchship.calibration.accuracy import Accuracy, compare_accuracy
from torchship.calibration.budget import BudgetOptions
from torchship.calibration.metrics import Budget, Metric, MetricChoice, OutputFacts, choose_metric
from torchship.data import LABELS_KEY, check_labels
from torchship.loaded import LoadedModel, to_torch_inputs
from torchship.runtimes.evaluate import EvalOutputs

__all__ = ["EagerCheck", "eager_check", "eager_output", "head_op", "measure_text"]

log = logging.getLogger(__name__)

#: Samples per eager forward pass of the reference.
CHUNK = 64
#: The ONNX op a torch layer exports as, for the classifier-head rule of `choose_metric`.
_HEAD_MODULES = {
    torch.nn.Linear: "Gemm",
    torch.nn.Softmax: "Softmax",
    torch.nn.LogSoftmax: "LogSoftmax",
    torch.nn.Sigmoid: "Sigmoid",
}


def measure_text(metric: str, value: float) -> str:
    """A measure's value in words: "drop 0.25 points", "mean cosine 0.9981", "SQNR 31.2 dB"."""
    if metric in (Metric.TOP1.value, Metric.AGREEMENT.value):
        return f"drop {value:.2f} points"
    if metric == Metric.COSINE.value:
        return f"mean cosine {value:.4f}"
    if metric == Metric.SQNR.value:
        return f"SQNR {value:.1f} dB"
    return f"relative error {value:.4g}"


@dataclass(frozen=True)
class EagerCheck:
    """What every candidate is held to: the metric and why, its budget, and FP32 eager's first
    output on the eval data (with the labels only when the metric is top1)."""

    choice: MetricChoice
    budget: Budget
    reference: EvalOutputs
    warnings: tuple[str, ...] = ()

    def accuracy(self, outputs: EvalOutputs) -> Accuracy:
        return compare_accuracy(outputs, self.reference, metric=self.choice.metric)

    def verdict(self, accuracy: Accuracy) -> tuple[float, str]:
        """The value the budget reads and, when the budget is missed, why ("" when it holds)."""
        value, metric = accuracy.budget_value, self.choice.metric
        if self.budget.holds(value):
            return value, ""
        if metric in (Metric.TOP1, Metric.AGREEMENT):
            return value, f"accuracy drop {value:.2f} points > budget {self.budget.limit:g}"
        sign = "<" if self.budget.higher_is_better else ">"
        return value, f"{measure_text(metric.value, value)} {sign} budget {self.budget.limit:g}"


def eager_check(
    model: LoadedModel,
    data: Mapping[str, np.ndarray],
    *,
    asked: BudgetOptions,
    options: BudgetOptions | None = None,
) -> EagerCheck:
    """The metric for `model`'s first output, its budget from `options` (default `asked`) and
    the eager reference on `data`; a limit in `asked` the metric does not read is a warning."""
    output = eager_output(model, data)
    shape = tuple(output.shape[1:])
    labels = data.get(LABELS_KEY)
    facts = OutputFacts(model.outputs[0], output.ndim, head_op(model))
    choice = choose_metric(
        facts, sample_shape=shape, has_labels=labels is not None, task=model.task,
        override=asked.metric,
    )  # fmt: skip
    rows = output.reshape(len(output), -1).astype(np.float32, copy=False)
    if choice.metric is Metric.TOP1:
        labels = check_labels(labels, what="--eval", samples=len(rows), classes=rows.shape[1])
    else:
        labels = None  # agreement, cosine...: against FP32, not the labels
    budget = (options or asked).budget(choice.metric)
    warnings = tuple(
        f"{flag} is not read: the measure is {choice.metric.value} ({choice.reason})"
        for flag in asked.unused_limits(choice.metric)
    )
    log.info("metric %s (%s), budget: %s", choice.metric.value, choice.reason, budget.describe())
    return EagerCheck(choice, budget, EvalOutputs(rows, labels, sample_shape=shape), warnings)


def eager_output(model: LoadedModel, data: Mapping[str, np.ndarray]) -> np.ndarray:
    """FP32 eager's first output on every sample of `data`, `CHUNK` samples a pass."""
    feeds = {s.name: np.asarray(data[s.name]) for s in model.inputs}
    count = len(next(iter(feeds.values())))
    chunks = [
        model.run({k: v[i : i + CHUNK] for k, v in feeds.items()})[model.outputs[0]]
        for i in range(0, count, CHUNK)
    ]
    return np.concatenate(chunks)


def head_op(model: LoadedModel) -> str | None:
    """The ONNX op of the layer that returned the model's first output (a Linear head is
    "Gemm"); None when a function, not one of those layers, made it."""
    made_by: dict[int, str] = {}

    def record(module, _inputs, output) -> None:
        made_by[id(output)] = _HEAD_MODULES[type(module)]

    hooks = [
        m.register_forward_hook(record) for m in model.module.modules() if type(m) in _HEAD_MODULES
    ]
    try:
        with torch.inference_mode():
            result = model.module(*to_torch_inputs(model.inputs, model.example))
        first = _first_tensor(result)
        return None if first is None else made_by.get(id(first))
    except Exception:  # noqa: BLE001 - a hint only; the reference pass reports a failing model
        return None
    finally:
        for hook in hooks:
            hook.remove()


def _first_tensor(result: object) -> torch.Tensor | None:
    if isinstance(result, torch.Tensor):
        return result
    if isinstance(result, dict):
        result = list(result.values())
    if isinstance(result, (tuple, list)):
        return next((t for t in map(_first_tensor, result) if t is not None), None)
    return None
