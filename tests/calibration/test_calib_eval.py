"""Eval and calibration passes on tiny hand-built ONNX graphs: drops, labels, run errors."""

from __future__ import annotations

import itertools

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from torchship.calibration import open_data
from torchship.calibration.accuracy import compare_accuracy, run_eval
from torchship.calibration.calibrators import compute_ranges
from torchship.calibration.sensitivity import fallback_loop
from torchship.errors import CalibrationError
from torchship.runtimes.evaluate import EvalOutputs
from torchship.specs import InputSpec

X3 = InputSpec("x", "float32", (4, 3), dynamic={0: "batch"})
XN = InputSpec("x", "float32", (1, 4), dynamic={0: "batch", 1: "n"})


def _save(path, nodes, inputs, outputs, initializers=()):
    graph = helper.make_graph(nodes, "g", inputs, outputs, initializer=list(initializers))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


@pytest.fixture(scope="module")
def identity3(tmp_path_factory):
    """logits = x, 3 classes: the label range and drop arithmetic are easy to control."""
    path = tmp_path_factory.mktemp("identity") / "identity.onnx"
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3])
    y = helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 3])
    return _save(path, [helper.make_node("Relu", ["x"], ["logits"])], [x], [y])


@pytest.fixture(scope="module")
def reshape4(tmp_path_factory):
    """Reshape to [-1, 4]: valid data by the input spec, but ORT fails when n*batch % 4 != 0."""
    path = tmp_path_factory.mktemp("reshape") / "reshape.onnx"
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "n"])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    shape = helper.make_tensor("shape", TensorProto.INT64, [2], [-1, 4])
    nodes = [
        helper.make_node("Reshape", ["x", "shape"], ["r"]),
        helper.make_node("Relu", ["r"], ["y"]),
    ]
    return _save(path, nodes, [x], [y], [shape])


def test_a_drop_exactly_at_the_budget_passes():
    labels = np.zeros(400, np.int64)
    reference = EvalOutputs(np.tile([[1.0, 0.0]], (400, 1)).astype(np.float32), labels)
    logits = reference.logits.copy()
    logits[:4] = [0.0, 1.0]  # 4 of 400 wrong: exactly 1.0 point
    accuracy = compare_accuracy(EvalOutputs(logits, labels), reference)
    assert accuracy.drop == 1.0
    agreement = compare_accuracy(EvalOutputs(logits, None), EvalOutputs(reference.logits, None))
    assert agreement.drop == 1.0
    # A drop computed elsewhere as 100 * (1 - 396/400) still meets a 1.0 budget.
    rounded = type(accuracy)("labels", 400, 100 * (1 - 396 / 400), 0.99, 1.0)
    assert fallback_loop([], lambda excluded: rounded, max_drop=1.0).passed
    assert fallback_loop([("n", "Conv")], lambda excluded: rounded, max_drop=1.0).passed


def test_labels_beyond_the_number_of_classes_are_refused(identity3, tmp_path):
    np.savez(tmp_path / "eval.npz", x=np.ones((4, 3), np.float32), labels=np.array([1, 2, 3, 0]))
    with pytest.raises(
        CalibrationError, match=r"eval\.npz samples 0\.\.3: label 3 is out of range: .* 3 classes"
    ):
        run_eval(identity3, open_data(tmp_path / "eval.npz", inputs=[X3]))


def test_fp32_top1_near_chance_gives_a_warning():
    from torchship.calibration.accuracy import near_chance_warning

    logits = np.eye(4, dtype=np.float32)[np.arange(100) % 4]
    good = EvalOutputs(logits, np.arange(100) % 4)
    shifted = EvalOutputs(logits, (np.arange(100) + 1) % 4)  # labels off by one class
    assert near_chance_warning(good) is None
    assert near_chance_warning(EvalOutputs(logits, None)) is None
    assert "near chance (25.0% for 4 classes)" in near_chance_warning(shifted)


_calls = itertools.count()


def _reshuffled():
    """Like a DataLoader(shuffle=True): another order on every call."""
    rng = np.random.default_rng(next(_calls))
    x = np.random.default_rng(0).standard_normal((16, 3)).astype(np.float32)
    return [{"x": x[rng.permutation(16)]}]


def test_eval_data_that_changes_between_passes_is_refused(identity3):
    data = open_data(f"{__name__}:_reshuffled", inputs=[X3])
    reference = run_eval(identity3, data)
    candidate = run_eval(identity3, data)
    with pytest.raises(
        CalibrationError, match="eval data changed between passes: make the data function determ"
    ):
        compare_accuracy(candidate, reference)


def test_same_eval_data_twice_compares_cleanly(identity3):
    data = open_data({"x": np.eye(3, dtype=np.float32)}, inputs=[X3])
    accuracy = compare_accuracy(run_eval(identity3, data), run_eval(identity3, data))
    assert accuracy.drop == 0.0 and accuracy.agreement == 1.0


def test_onnxruntime_failing_on_a_batch_names_the_batch(reshape4):
    bad = {"x": np.ones((1, 3), np.float32)}  # 3 values cannot be reshaped to [-1, 4]
    with pytest.raises(CalibrationError, match=r"<arrays> samples 0\.\.0: reshape\.onnx failed"):
        run_eval(reshape4, open_data(bad, inputs=[XN]))
    with pytest.raises(CalibrationError, match=r"<arrays> samples 0\.\.0: calibration run failed"):
        compute_ranges(reshape4, open_data(bad, inputs=[XN]), method="minmax")


def test_calibration_still_runs_on_valid_data(reshape4):
    data = open_data({"x": np.ones((2, 8), np.float32)}, inputs=[XN])
    ranges = compute_ranges(reshape4, data, method="minmax")
    assert "y" in dict(ranges.items()) and data.count == 2
