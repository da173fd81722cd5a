"""Which accuracy measure fits a model's output, and the budget that goes with it.

Argmax agreement only means something for class scores: the argmax of a 384-d sentence
embedding flips under INT8 while its cosine stays above 0.99 (docs/design.md, "Accuracy
measures"). So the measure follows the output: top-1 for labelled classifiers, agreement for
class scores without labels, cosine for embeddings and hidden states, SQNR for other tensors.
The rule is in `choose_metric`; `--metric` overrides it.
"""

from __future__ import annotations

import enum
import json
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from torchship.errors import ConfigError

__all__ = [
    "Metric",
    "MetricChoice",
    "Budget",
    "choose_metric",
    "output_facts",
    "recorded_task",
    "vector_cosines",
    "sqnr_db",
    "relative_error",
    "MAX_SQNR_DB",
]

#: SQNR of identical outputs (float32 rounding sits near 150 dB): a finite number for JSON.
MAX_SQNR_DB = 200.0
#: Relative error reported when the reference is all zeros and the candidate is not.
MAX_RELERR = 1e6
#: Slack when comparing a measure with its budget: 4 of 400 samples is a 1.0-point drop, exactly.
BUDGET_TOLERANCE = 1e-9


class Metric(str, enum.Enum):
    TOP1 = "top1"  # top-1 against labels; budget: max drop in points vs FP32
    AGREEMENT = "agreement"  # top-1 match with FP32; budget: max share changed, in points
    COSINE = "cosine"  # mean cosine similarity with FP32; budget: a minimum
    SQNR = "sqnr"  # signal-to-quantization-noise ratio in dB; budget: a minimum
    RELERR = "relerr"  # ||int8 - fp32|| / ||fp32||; budget: a maximum

    @classmethod
    def parse(cls, value: str | Metric) -> Metric:
        try:
            return cls(value)
        except ValueError:
            valid = ", ".join(m.value for m in cls)
            raise ConfigError(f"--metric {value!r}: valid: auto, {valid}") from None

    @property
    def option(self) -> str:
        """The option that holds this metric's limit (`max_drop`, `min_cosine`, ...)."""
        return _OPTIONS[self]

    @property
    def flag(self) -> str:
        return "--" + self.option.replace("_", "-")


#: Defaults of each metric's budget (the CLI flag beside it).
DEFAULT_LIMITS = {
    Metric.TOP1: 1.0,  # --max-drop, points
    Metric.AGREEMENT: 1.0,  # --max-drop, points
    Metric.COSINE: 0.99,  # --min-cosine (the int8 parity profile's floor)
    Metric.SQNR: 20.0,  # --min-sqnr, dB (noise at 1% of the signal's power)
    Metric.RELERR: 0.1,  # --max-relerr (the same 1% noise power as 20 dB)
}
#: The option that holds each metric's limit: a QuantizeOptions / BudgetOptions field and a
#: pipeline.toml key; the CLI flag is its dashed form (`--max-drop`).
_OPTIONS = {
    Metric.TOP1: "max_drop",
    Metric.AGREEMENT: "max_drop",
    Metric.COSINE: "min_cosine",
    Metric.SQNR: "min_sqnr",
    Metric.RELERR: "max_relerr",
}


@dataclass(frozen=True)
class Budget:
    """A metric and its limit: points of drop (top1, agreement), a minimum mean cosine, a
    minimum SQNR in dB or a maximum relative error."""

    metric: Metric
    limit: float

    @classmethod
    def for_metric(
        cls,
        metric: Metric,
        *,
        max_drop: float | None = None,
        min_cosine: float | None = None,
        min_sqnr: float | None = None,
        max_relerr: float | None = None,
    ) -> Budget:
        limits = {
            "max_drop": max_drop, "min_cosine": min_cosine,
            "min_sqnr": min_sqnr, "max_relerr": max_relerr,
        }  # fmt: skip
        given = limits[metric.option]
        return cls(metric, DEFAULT_LIMITS[metric] if given is None else float(given))

    @property
    def flag(self) -> str:
        return self.metric.flag

    @property
    def option(self) -> str:
        return self.metric.option

    @property
    def higher_is_better(self) -> bool:
        return self.metric in (Metric.COSINE, Metric.SQNR)

    def holds(self, value: float) -> bool:
        if self.metric in (Metric.TOP1, Metric.AGREEMENT, Metric.RELERR):
            return value <= self.limit + BUDGET_TOLERANCE
        return value >= self.limit - BUDGET_TOLERANCE

    def describe(self) -> str:
        if self.metric in (Metric.TOP1, Metric.AGREEMENT):
            return f"{self.metric.value} drop at most {self.limit:g} points ({self.flag})"
        bound = "at least" if self.higher_is_better else "at most"
        unit = " dB" if self.metric is Metric.SQNR else ""
        return f"{self.metric.value} {bound} {self.limit:g}{unit} ({self.flag})"


@dataclass(frozen=True)
class MetricChoice:
    """The metric for an output and the rule that picked it (reported, so it is no surprise)."""

    metric: Metric
    reason: str


@dataclass(frozen=True)
class OutputFacts:
    """What the ONNX graph says about the first output: its name, rank and producing op."""

    name: str
    rank: int | None
    producer: str | None


#: Output names that say what they hold (matched as words in snake/camel/dotted names).
_CLASS_NAMES = re.compile(r"(logit|score|prob|class|label)", re.IGNORECASE)
_EMBEDDING_NAMES = re.compile(
    r"(embed|hidden|pool|feature|sentence|encod|vector|represent)", re.IGNORECASE
)
#: Tasks (Hugging Face pipeline names and torchship's) whose first output is class scores.
_CLASS_TASKS = re.compile(r"(classification|fill-mask|masked-lm|causal-lm|text-generation)")
_EMBEDDING_TASKS = re.compile(r"(feature-extraction|embedding|sentence-similarity|last-hidden)")
#: Ops a classifier head ends in; shape-only ops after them are looked through.
_HEAD_OPS = frozenset({"Gemm", "MatMul", "Softmax", "LogSoftmax", "Sigmoid"})
_PASS_THROUGH = frozenset({"Reshape", "Flatten", "Squeeze", "Identity", "Cast", "Unsqueeze"})


def choose_metric(
    facts: OutputFacts,
    *,
    sample_shape: tuple[int, ...],
    has_labels: bool,
    task: str | None = None,
    override: Metric | str | None = None,
) -> MetricChoice:
    """The metric for the first output, by the first rule that applies:

    1. `override` (`--metric`); top1 needs labels.
    2. the task recorded with the model (classification, fill-mask -> class scores;
       feature-extraction -> cosine);
    3. labels in the eval data -> top1;
    4. the output's name: logits/scores/probs -> agreement; embedding/hidden/pooled/features ->
       cosine;
    5. its shape: one value per sample -> sqnr (argmax agreement would be 100% on anything);
       3-D or more (hidden states, feature maps) -> cosine;
    6. a 2-D output made by a classifier head (Gemm, MatMul, MatMul + Add, Softmax) -> agreement;
       any other 2-D output (pooling, normalization, a division) -> cosine.
    """
    if override not in (None, "auto"):
        metric = Metric.parse(override)
        if metric is Metric.TOP1 and not has_labels:
            raise ConfigError("--metric top1 needs labels: give --eval DATA with a `labels` array")
        return MetricChoice(metric, "--metric")
    classes = Metric.TOP1 if has_labels else Metric.AGREEMENT
    if task:
        if _CLASS_TASKS.search(task):
            return MetricChoice(classes, f"task {task!r}: class scores")
        if _EMBEDDING_TASKS.search(task):
            return MetricChoice(Metric.COSINE, f"task {task!r}: embeddings")
    if has_labels:
        return MetricChoice(Metric.TOP1, "the eval data has labels")
    if _EMBEDDING_NAMES.search(facts.name):
        return MetricChoice(Metric.COSINE, f"output {facts.name!r} is named like an embedding")
    if _CLASS_NAMES.search(facts.name):
        return MetricChoice(Metric.AGREEMENT, f"output {facts.name!r} is named like class scores")
    values = int(np.prod(sample_shape)) if sample_shape else 1
    if values <= 1:
        return MetricChoice(Metric.SQNR, f"output {facts.name!r} has one value per sample")
    rank = facts.rank if facts.rank is not None else 1 + len(sample_shape)
    if rank >= 3:
        return MetricChoice(Metric.COSINE, f"output {facts.name!r} is a {rank}-D tensor")
    if facts.producer in _HEAD_OPS:
        return MetricChoice(
            Metric.AGREEMENT, f"output {facts.name!r} comes from a {facts.producer} head"
        )
    made_by = f"a {facts.producer}" if facts.producer else "no classifier head"
    return MetricChoice(
        Metric.COSINE, f"output {facts.name!r} is 2-D, made by {made_by}: an embedding"
    )


def output_facts(model_path: Path) -> OutputFacts:
    """Name, rank and producing op (seen through reshapes and casts; MatMul + Add is MatMul) of
    the first graph output."""
    graph = onnx.load(str(model_path), load_external_data=False).graph
    output = graph.output[0]
    dims = output.type.tensor_type.shape.dim if output.type.HasField("tensor_type") else None
    has_shape = output.type.tensor_type.HasField("shape") if dims is not None else False
    producers = {name: node for node in graph.node for name in node.output}
    initializers = {t.name for t in graph.initializer}
    node = producers.get(output.name)
    while node is not None and node.op_type in _PASS_THROUGH:
        node = producers.get(node.input[0])
    if node is not None and node.op_type == "Add":  # a bias after MatMul is still the head
        feeding = [producers.get(i) for i in node.input if i not in initializers]
        if any(n is not None and n.op_type in ("MatMul", "Gemm") for n in feeding):
            return OutputFacts(output.name, len(dims) if has_shape else None, "MatMul")
    return OutputFacts(
        output.name, len(dims) if has_shape else None, None if node is None else node.op_type
    )


def recorded_task(model_path: Path, details: dict | None = None) -> str | None:
    """The task the export recorded for `model_path` (`details.task` of its artifact entry in
    the sibling manifest.json, or the manifest's `source.task`); None when there is none."""
    if details and isinstance(details.get("task"), str):
        return details["task"]
    manifest = Path(model_path).parent / "manifest.json"
    try:
        data = json.loads(manifest.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict):
        return None
    for entry in data.get("artifacts") or []:
        if isinstance(entry, dict) and entry.get("path") == Path(model_path).name:
            task = (entry.get("details") or {}).get("task")
            if isinstance(task, str):
                return task
    source = data.get("source")
    task = source.get("task") if isinstance(source, dict) else None
    return task if isinstance(task, str) else None


def vector_cosines(a: np.ndarray, b: np.ndarray, sample_shape: tuple[int, ...]) -> np.ndarray:
    """Cosine similarity per vector: per sample, or per position along the last axis for 3-D
    outputs ([samples, tokens, hidden]: one cosine per token)."""
    if len(sample_shape) == 2:
        a, b = a.reshape(-1, sample_shape[-1]), b.reshape(-1, sample_shape[-1])
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    num = np.sum(a64 * b64, axis=1)
    den = np.linalg.norm(a64, axis=1) * np.linalg.norm(b64, axis=1)
    both_zero = (np.linalg.norm(a64, axis=1) == 0) & (np.linalg.norm(b64, axis=1) == 0)
    return np.where(den > 0, num / np.maximum(den, 1e-300), np.where(both_zero, 1.0, 0.0))


def sqnr_db(candidate: np.ndarray, reference: np.ndarray) -> float:
    """10 log10(signal power / noise power) over the whole set, capped at MAX_SQNR_DB."""
    ref = reference.astype(np.float64)
    noise = float(np.sum((candidate.astype(np.float64) - ref) ** 2))
    signal = float(np.sum(ref**2))
    if noise == 0.0:
        return MAX_SQNR_DB
    if signal == 0.0:
        return -MAX_SQNR_DB
    return float(np.clip(10.0 * np.log10(signal / noise), -MAX_SQNR_DB, MAX_SQNR_DB))


def relative_error(candidate: np.ndarray, reference: np.ndarray) -> float:
    """||candidate - reference|| / ||reference|| over the whole set (L2)."""
    ref = reference.astype(np.float64)
    noise = float(np.linalg.norm(candidate.astype(np.float64) - ref))
    signal = float(np.linalg.norm(ref))
    if noise == 0.0:
        return 0.0
    return min(noise / signal, MAX_RELERR) if signal > 0 else MAX_RELERR
