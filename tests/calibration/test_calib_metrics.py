"""The accuracy measure follows the output: class scores -> agreement/top-1, embeddings and
hidden states -> cosine, one value per sample -> SQNR; `--metric` overrides it."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import torch
from torch import nn

from torchship.calibration import QuantizeOptions, quantize
from torchship.calibration.accuracy import compare_accuracy
from torchship.calibration.metrics import (
    Budget,
    Metric,
    OutputFacts,
    choose_metric,
    output_facts,
    recorded_task,
)
from torchship.calibration.random_inputs import bounded_specs, vocabulary_bounds
from torchship.cli.main import main
from torchship.errors import ConfigError
from torchship.loaded import LoadedModel
from torchship.runtimes.evaluate import EvalOutputs
from torchship.specs import InputSpec

FAST = {"bench": False, "threads": 2}
VOCAB = 100


class TokenModel(nn.Module):
    """Embedding + a 2-layer MLP per token; the head makes the output kind under test."""

    def __init__(self, kind: str) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.kind = kind
        self.embed = nn.Embedding(VOCAB, 32)
        self.mlp = nn.Sequential(nn.Linear(32, 64), nn.GELU(), nn.Linear(64, 32))
        self.head = nn.Linear(32, 5 if kind == "logits" else 1)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.mlp(self.embed(input_ids))
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        if self.kind == "hidden":
            return hidden * mask
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)  # mean pooling
        return pooled if self.kind == "embedding" else self.head(pooled)


def _token_inputs() -> tuple[InputSpec, ...]:
    return (
        InputSpec("input_ids", "int64", (2, 8), {0: "batch", 1: "seq"}, value_range=(0, VOCAB)),
        InputSpec("attention_mask", "int64", (2, 8), {0: "batch", 1: "seq"}, value_range=(1, 2)),
    )


@pytest.fixture(scope="module")
def token_models(tmp_path_factory, onnx_exporter):
    """kind -> FP32 ONNX of TokenModel(kind), its output named the neutral "output"."""
    made = {}
    for kind in ("embedding", "logits", "hidden", "regression"):
        model = LoadedModel(TokenModel(kind).eval(), _token_inputs(), ("output",), source=kind)
        made[kind] = onnx_exporter(model, tmp_path_factory.mktemp(kind))
    return made


@pytest.mark.parametrize(
    ("kind", "metric"),
    [
        ("embedding", Metric.COSINE),  # 2-D, made by a Div (mean pooling): not class scores
        ("logits", Metric.AGREEMENT),  # 2-D from a Linear head
        ("hidden", Metric.COSINE),  # 3-D hidden states
        ("regression", Metric.SQNR),  # one value per sample: argmax is always 0
    ],
)
def test_metric_follows_the_output_kind_of_an_exported_model(token_models, kind, metric):
    facts = output_facts(token_models[kind].path)
    shape = {"embedding": (32,), "logits": (5,), "hidden": (8, 32), "regression": (1,)}[kind]
    choice = choose_metric(facts, sample_shape=shape, has_labels=False)
    assert choice.metric is metric, choice


@pytest.mark.parametrize(
    ("facts", "kwargs", "metric", "reason"),
    [
        (OutputFacts("output", 2, "Div"), {"task": "feature-extraction"}, Metric.COSINE, "task"),
        (OutputFacts("output", 2, "Div"), {"task": "image-classification"}, Metric.AGREEMENT, ""),
        (OutputFacts("pooler_output", 2, "Tanh"), {}, Metric.COSINE, "named like an embedding"),
        (OutputFacts("sentence_embedding", 2, "Gemm"), {}, Metric.COSINE, "embedding"),
        (OutputFacts("logits", 3, "MatMul"), {}, Metric.AGREEMENT, "named like class scores"),
        (OutputFacts("output", 2, "Gemm"), {"has_labels": True}, Metric.TOP1, "labels"),
        (OutputFacts("output", 2, "Softmax"), {}, Metric.AGREEMENT, "Softmax head"),
        (OutputFacts("output", 4, "Conv"), {}, Metric.COSINE, "4-D tensor"),
        (OutputFacts("output", 2, "Gemm"), {"override": "relerr"}, Metric.RELERR, "--metric"),
    ],
)
def test_choice_rules_in_order(facts, kwargs, metric, reason):
    kwargs = {"has_labels": False, "sample_shape": (16,), **kwargs}
    choice = choose_metric(facts, **kwargs)
    assert choice.metric is metric and reason in choice.reason


def test_top1_without_labels_and_unknown_metrics_are_refused():
    facts = OutputFacts("output", 2, "Gemm")
    with pytest.raises(ConfigError, match="--metric top1 needs labels"):
        choose_metric(facts, sample_shape=(4,), has_labels=False, override="top1")
    with pytest.raises(ConfigError, match="--metric 'argmax': valid: auto, top1, agreement"):
        QuantizeOptions(metric="argmax")
    with pytest.raises(ConfigError, match="--min-cosine 2.0: must be -1..1"):
        QuantizeOptions(min_cosine=2.0)


def test_measures_of_an_embedding_whose_argmax_flips():
    rng = np.random.default_rng(0)
    reference = rng.standard_normal((50, 384)).astype(np.float32)
    candidate = reference + 0.05 * rng.standard_normal(reference.shape).astype(np.float32)
    accuracy = compare_accuracy(
        EvalOutputs(candidate, None), EvalOutputs(reference, None), metric="cosine"
    )
    assert accuracy.agreement <= 0.9  # argmax of near-equal values flips: meaningless here
    assert accuracy.metric == "cosine" and accuracy.value == accuracy.cosine > 0.998
    assert accuracy.min_cosine <= accuracy.cosine
    assert 25 < accuracy.sqnr_db < 27  # noise power 0.0025 of signal: 26 dB
    assert accuracy.relerr == pytest.approx(0.05, rel=0.05)
    assert Budget(Metric.COSINE, 0.99).holds(accuracy.budget_value)
    assert not Budget(Metric.SQNR, 30.0).holds(accuracy.with_metric("sqnr").budget_value)


def test_token_outputs_score_cosine_per_token_and_agreement_per_sample():
    reference = np.zeros((2, 3, 4), np.float32)
    reference[..., 0] = 1.0
    candidate = reference.copy()
    candidate[1, 2] = [0.0, 1.0, 0.0, 0.0]  # one token of sample 1 changes class
    accuracy = compare_accuracy(
        EvalOutputs(candidate.reshape(2, -1), None, sample_shape=(3, 4)),
        EvalOutputs(reference.reshape(2, -1), None, sample_shape=(3, 4)),
    )
    assert accuracy.agreement == 0.5 and accuracy.min_cosine == 0.0
    assert accuracy.cosine == pytest.approx(5 / 6)


def test_recorded_task_is_read_from_the_export_manifest(tmp_path):
    model = tmp_path / "model.onnx"
    model.write_bytes(b"")
    assert recorded_task(model) is None
    entry = {"path": "model.onnx", "details": {"task": "feature-extraction"}}
    (tmp_path / "manifest.json").write_text(json.dumps({"artifacts": [entry]}))
    assert recorded_task(model) == "feature-extraction"
    (tmp_path / "manifest.json").write_text(json.dumps({"source": {"task": "fill-mask"}}))
    assert recorded_task(model) == "fill-mask"


def test_an_embedding_is_scored_by_cosine_and_stays_int8(tmp_path, token_models):
    result = quantize(
        token_models["embedding"], tmp_path / "q", options=QuantizeOptions(mode="dynamic", **FAST)
    )
    accuracy = result.report["accuracy"]
    assert accuracy["metric"] == "cosine" and "2-D, made by a Div" in accuracy["chosen_by"]
    assert accuracy["budget"] == 0.99 and accuracy["budget_flag"] == "--min-cosine"
    assert accuracy["value"] == accuracy["cosine"] >= 0.99
    assert result.report["fallback"]["excluded_nodes"] == []
    assert result.report["op_counts"]["integer_ops"] > 0
    assert result.passed, result.report["warnings"]
    assert result.report["eval_source"] == "random"
    assert any("64 random inputs, a last resort" in w for w in result.warnings)


def test_metric_flag_overrides_the_choice_and_says_which_limit_applies(
    tmp_path, token_models, capsys
):
    model = str(token_models["embedding"].path)
    out = tmp_path / "agree"
    args = ["quantize", model, "--mode", "dynamic", "--no-bench", "--threads", "2"]
    code = main([*args, "--metric", "sqnr", "--min-sqnr", "10", "--max-drop", "3", "-o", str(out)])
    report = json.loads((out / "quantize_report.json").read_text())
    assert report["accuracy"]["metric"] == "sqnr" and report["accuracy"]["chosen_by"] == "--metric"
    assert report["accuracy"]["budget"] == 10.0 and code == 0
    printed = capsys.readouterr().out
    assert "accuracy (sqnr):" in printed and "within budget 10" in printed
    assert "--max-drop not used: the metric is sqnr" in printed
    assert main([*args, "--metric", "top1", "-o", str(tmp_path / "top1")]) == 2
    assert "--metric top1 needs labels" in capsys.readouterr().err


def test_random_token_ids_stay_within_the_embedding_table(token_models):
    path = token_models["embedding"].path
    assert vocabulary_bounds(path) == {"input_ids": VOCAB}  # the mask indexes nothing
    bare = [replace(s, value_range=None) for s in _token_inputs()]
    ids, mask = bounded_specs(bare, path)
    assert ids.value_range == (0, VOCAB) and mask.value_range is None
