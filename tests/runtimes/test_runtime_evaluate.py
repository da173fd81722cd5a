"""The evaluator: any artifact on a data set through its Runner, padding cut off, labels checked."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from torchship.artifact import Artifact, Format
from torchship.data import open_data
from torchship.errors import CalibrationError
from torchship.runtimes.evaluate import EvalOutputs, evaluate, evaluate_top1
from torchship.specs import InputSpec

FIXED = InputSpec(name="x", dtype="float32", shape=(4, 4))  # batch 4, not dynamic
FORMATS = [Format.ONNX, Format.TORCHSCRIPT, Format.EXPORTED_PROGRAM, Format.EAGER]


def _data(count: int = 10) -> dict[str, np.ndarray]:
    x = np.random.default_rng(0).standard_normal((count, 4)).astype(np.float32)
    return {"x": x, "labels": np.arange(count) % 3}


@pytest.fixture(scope="module")
def reference(tiny_module) -> np.ndarray:
    with torch.inference_mode():
        return tiny_module(torch.from_numpy(_data()["x"])).numpy()


@pytest.mark.parametrize("fmt", FORMATS, ids=lambda f: f.value)
def test_every_format_gives_the_eager_outputs_on_its_own_runtime(tiny_artifacts, reference, fmt):
    outputs = evaluate(tiny_artifacts[fmt], _data(), batch_size=3)
    np.testing.assert_allclose(outputs.logits, reference, rtol=1e-5, atol=1e-5)
    assert (
        outputs.logits.dtype == np.float32 and outputs.labels.tolist() == _data()["labels"].tolist()
    )
    assert outputs.source == "<arrays>" and len(outputs.sha256) == 64


@pytest.mark.parametrize("fmt", FORMATS, ids=lambda f: f.value)
def test_a_fixed_batch_is_padded_and_the_padding_cut_off(tiny_artifacts, reference, fmt):
    artifact = replace(tiny_artifacts[fmt], inputs=(FIXED,))
    data = open_data(_data(), inputs=[FIXED])
    outputs = evaluate(artifact, data, batch_size=3)  # a fixed batch axis keeps its own size
    assert data.batch_size == 4 and data.padded == 2 and data.count == 10
    np.testing.assert_allclose(outputs.logits, reference, rtol=1e-5, atol=1e-5)
    assert len(outputs.labels) == 10


def test_the_same_samples_hash_the_same_however_they_are_batched(tiny_artifacts):
    fixed = evaluate(replace(tiny_artifacts[Format.ONNX], inputs=(FIXED,)), _data())
    dynamic = evaluate(tiny_artifacts[Format.EAGER], _data(), batch_size=7)
    assert fixed.sha256 == dynamic.sha256


def test_top1_counts_the_rows_whose_argmax_is_the_label(tiny_artifacts, reference):
    data = _data()
    expected = float(np.mean(reference.argmax(axis=1) == data["labels"]))
    outputs = evaluate(tiny_artifacts[Format.ONNX], data)
    assert outputs.top1() == pytest.approx(expected)
    top1 = evaluate_top1("torch", tiny_artifacts[Format.EAGER], {"x": data["x"]}, data["labels"])
    assert top1 == pytest.approx(expected)
    unlabelled = evaluate(tiny_artifacts[Format.ONNX], {"x": data["x"]})
    assert unlabelled.labels is None and unlabelled.top1() is None
    assert EvalOutputs(np.eye(3), np.array([0, 1, 1])).top1() == pytest.approx(2 / 3)


def test_whole_number_float_labels_are_class_ids(tiny_artifacts):
    data = _data()
    floats = {**data, "labels": data["labels"].astype(np.float32)}
    outputs = evaluate(tiny_artifacts[Format.EAGER], floats)
    assert outputs.labels.dtype == np.int64
    assert outputs.labels.tolist() == data["labels"].tolist()


@pytest.mark.parametrize("fmt", [Format.ONNX, Format.EAGER], ids=lambda f: f.value)
def test_labels_beyond_the_outputs_width_name_the_batch(tiny_artifacts, fmt):
    data = {**_data(), "labels": np.array([0, 1, 2, 3, 0, 1, 2, 0, 1, 2])}
    match = r"<arrays> samples 0\.\.9: label 3 is out of range: the model has 3 classes"
    with pytest.raises(CalibrationError, match=match):
        evaluate(tiny_artifacts[fmt], data)


class _FailsOnNegativeSums(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if float(x.sum()) < 0:
            raise ValueError("a negative batch")
        return x[:, :3]


def test_a_batch_the_runtime_fails_on_is_named_with_the_model():
    spec = InputSpec(name="x", dtype="float32", shape=(2, 4), dynamic={0: "batch"})
    artifact = Artifact.eager(_FailsOnNegativeSums(), inputs=[spec], outputs=["y"])
    x = np.ones((4, 4), np.float32)
    x[2:] = -1
    match = r"<arrays> samples 2\.\.3: <eager> failed on this batch: ValueError: a negative batch"
    with pytest.raises(CalibrationError, match=match):
        evaluate(artifact, {"x": x}, batch_size=2)
