"""One label rule (torchship.data.check_labels) for quantize's eval, pruning and the pipelines."""

from __future__ import annotations

import numpy as np
import pytest

from torchship.calibration import QuantizeOptions, quantize
from torchship.data import check_labels, load_arrays
from torchship.errors import CalibrationError
from torchship.exporter.pruning import PruneConfig, prune
from torchship.exporter.pruning.distill import evaluate_accuracy
from torchship.models import demo_dataset

FAST = {"bench": False, "threads": 2}


@pytest.mark.parametrize(
    "labels",
    [
        np.array([0, 2, 1], np.int32),
        np.array([0, 2, 1], np.uint8),
        np.array([0.0, 2.0, 1.0], np.float32),
        np.array([0.0, 2.0, 1.0], np.float64),
    ],
    ids=lambda a: str(a.dtype),
)
def test_integer_and_whole_number_float_labels_become_int64_class_ids(labels):
    ids = check_labels(labels, what="eval.npz", samples=3, classes=3)
    assert ids.dtype == np.int64 and ids.tolist() == [0, 2, 1]


@pytest.mark.parametrize(
    ("labels", "match"),
    [
        (np.array([0.0, 1.5, 2.0]), r"'labels' has dtype float64; expected integer class ids "
                                    r"\(1\.5 is not a whole number; save labels\.astype"),
        (np.array([0.0, np.nan, 2.0], np.float32), r"'labels' has dtype float32; .*\(nan is"),
        (np.array([True, False, True]), r"'labels' has dtype bool; expected integer class ids"),
        (np.array(["0", "1", "2"]), r"'labels' has dtype <U1; expected integer class ids"),
        (np.eye(3, dtype=np.int64), r"'labels' has shape \[3, 3\]; expected 1-D class ids, one "
                                    r"per sample \(for one-hot labels save labels\.argmax"),
        (np.array([0, 1]), r"arrays disagree on the number of samples: 2 'labels' for 3 samples"),
        (np.array([0, -1, 2]), r"label -1 is out of range: the model has 3 classes"),
        (np.array([1, 2, 3]), r"label 3 is out of range: .* labels must be 0\.\.2 \(1-based"),
    ],
)  # fmt: skip
def test_labels_that_are_not_class_ids_of_the_model_are_refused(labels, match):
    with pytest.raises(CalibrationError, match=rf"^eval\.npz: {match}"):
        check_labels(labels, what="eval.npz", samples=3, classes=3)


def test_without_the_number_of_classes_only_negative_ids_are_out_of_range():
    assert check_labels(np.array([0, 99]), what="x").tolist() == [0, 99]
    with pytest.raises(
        CalibrationError, match="x: label -2 is negative; expected class ids 0..N-1"
    ):
        check_labels(np.array([0, -2]), what="x")


@pytest.fixture(scope="module")
def eval_split() -> dict[str, np.ndarray]:
    images, labels = demo_dataset("test")
    return {"image": images[:96], "labels": labels[:96]}


def test_quantize_and_prune_accept_whole_number_float_labels_alike(
    tmp_path, demo_onnx, demo_model, demo_files, eval_split
):
    floats = {**eval_split, "labels": eval_split["labels"].astype(np.float32)}
    np.savez(tmp_path / "eval.npz", **floats)
    quantized = quantize(
        demo_onnx, tmp_path / "q", calib=demo_files["calib"], eval_data=tmp_path / "eval.npz",
        options=QuantizeOptions(**FAST),
    )  # fmt: skip
    pruned = prune(
        demo_model, config=PruneConfig(ratio=0.3, importance="taylor"), train=floats, eval=floats
    )
    accuracy = quantized.report["accuracy"]
    assert accuracy["mode"] == "labels"
    expected = evaluate_accuracy(demo_model, eval_split)  # the same set with int64 labels
    assert accuracy["fp32_top1"] == pytest.approx(expected, abs=1e-6)
    assert pruned.accuracy["unpruned"] == pytest.approx(expected)
    assert load_arrays(tmp_path / "eval.npz", inputs=demo_model.inputs)["labels"].dtype == np.int64


def test_quantize_prune_and_the_pipelines_refuse_fractional_labels_alike(
    tmp_path, demo_onnx, demo_model, demo_files, eval_split
):
    bad = {**eval_split, "labels": eval_split["labels"] + 0.5}
    np.savez(tmp_path / "eval.npz", **bad)
    messages = []
    with pytest.raises(CalibrationError) as quantize_error:
        quantize(
            demo_onnx, tmp_path / "q", calib=demo_files["calib"], eval_data=tmp_path / "eval.npz",
            options=QuantizeOptions(**FAST),
        )  # fmt: skip
    messages.append(str(quantize_error.value))
    with pytest.raises(CalibrationError) as prune_error:
        prune(demo_model, config=PruneConfig(ratio=0.3), eval=bad)
    messages.append(str(prune_error.value))
    with pytest.raises(CalibrationError) as pipeline_error:
        load_arrays(tmp_path / "eval.npz", inputs=demo_model.inputs, what="[model] eval")
    messages.append(str(pipeline_error.value))
    first = bad["labels"][0]
    rule = f"'labels' has dtype float64; expected integer class ids ({first} is not a whole number"
    assert all(rule in m for m in messages), messages
    assert len({m[m.index(rule) :] for m in messages}) == 1, messages
