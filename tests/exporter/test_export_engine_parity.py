"""Engine parity (TensorRT engine vs its ONNX on ort-cpu), with a stand-in engine runner.

The stand-in replaces only the TensorRT runner's load/infer, so the check runs without TensorRT
or a GPU: it computes the ONNX model's function in numpy, optionally changed by the test.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from torchship.artifact import Artifact, Format, Precision
from torchship.errors import ParityError
from torchship.exporter.engines import engine_parity, require_engine_parity
from torchship.runtimes.tensorrt.builder import ShapeRange
from torchship.runtimes.tensorrt.cache import EngineInfo
from torchship.runtimes.tensorrt.runner import TensorRTRunner
from torchship.specs import InputSpec

SPEC = InputSpec(name="x", dtype="float32", shape=(2, 4), dynamic={0: "batch"})
WEIGHT = np.arange(12, dtype=np.float32).reshape(4, 3) / 10 - 0.5


@pytest.fixture
def onnx_model(tmp_path) -> Artifact:
    w = helper.make_tensor("w", TensorProto.FLOAT, WEIGHT.shape, WEIGHT.ravel().tolist())
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])],
        "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 3])],
        initializer=[w],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path = tmp_path / "tiny.onnx"
    onnx.save(model, path)
    return Artifact.create(path, format=Format.ONNX, inputs=[SPEC], outputs=["y"])


def make_engine(tmp_path, precision: Precision = Precision.FP32) -> Artifact:
    info = EngineInfo(
        tensorrt_version="10.0.0", gpu_name="stand-in", compute_capability="9.0",
        precision=precision.value, mode="explicit", strongly_typed=False,
        profiles=(ShapeRange("x", (1, 4), (4, 4), (16, 4)),), onnx_file="tiny.onnx",
        onnx_sha256="0" * 64,
    )  # fmt: skip
    path = tmp_path / f"tiny.{precision.value}.engine"
    path.write_bytes(b"plan")
    return Artifact.create(
        path, format=Format.TENSORRT_ENGINE, inputs=[SPEC], outputs=["y"], precision=precision,
        details={"tensorrt": info.to_dict()},
    )  # fmt: skip


@pytest.fixture
def stand_in(monkeypatch):
    """Install a stand-in engine runner; returns the list that records the batch sizes run."""
    state = {"change": lambda y: {"y": y}, "batches": []}

    def infer(self, feeds):
        state["batches"].append(feeds["x"].shape[0])
        return state["change"](feeds["x"].astype(np.float64) @ WEIGHT)

    monkeypatch.setattr(TensorRTRunner, "unavailable_reason", classmethod(lambda cls: None))
    monkeypatch.setattr(TensorRTRunner, "_load", lambda self: None)
    monkeypatch.setattr(TensorRTRunner, "_close", lambda self: None)
    monkeypatch.setattr(TensorRTRunner, "_infer", infer)
    return state


def test_matching_engine_passes_at_the_profile_shapes(tmp_path, onnx_model, stand_in):
    result = engine_parity(make_engine(tmp_path), onnx_model)
    assert result.report.passed and result.top1_agreement == 1.0
    assert [c.case for c in result.report.cases] == [
        "random input #1 (opt shapes)",
        "random input #2 (opt shapes)",
        "random input (min shapes)",
        "random input (max shapes)",
    ]
    assert stand_in["batches"] == [4, 4, 1, 16]
    data = require_engine_parity(make_engine(tmp_path), onnx_model)
    assert data["passed"] is True and data["runtime"] == "tensorrt" and data["top1_agreement"] == 1
    assert data["artifact"] == "tiny.fp32.engine" and len(data["cases"]) == 4
    assert data["profile"] == {"atol": 1e-4, "rtol": 1e-3, "min_cosine": 0.9999}


def test_top1_agreement_counts_changed_winners(tmp_path, onnx_model, stand_in):
    def swap_first_row(y):
        y = y.copy()
        y[0] = -y[0]  # the first sample's winning class changes (its scores are not all equal)
        return {"y": y}

    stand_in["change"] = swap_first_row
    result = engine_parity(make_engine(tmp_path), onnx_model, num_random=1)
    assert not result.report.passed
    # opt batch 4 and max batch 16 lose one winner each; min batch 1 loses its only one
    assert result.top1_agreement == pytest.approx(np.mean([3 / 4, 0.0, 15 / 16]))
    with pytest.raises(
        ParityError,
        match=r"^parity failed for tiny\.fp32\.engine \(tensorrt\): output 'y' on random input "
        r"#1 \(opt shapes\): max abs err \S+ at \[0, \d\] \(atol 0\.0001\)",
    ):
        require_engine_parity(make_engine(tmp_path), onnx_model)


def test_int8_engine_uses_the_cosine_profile(tmp_path, onnx_model, stand_in):
    stand_in["change"] = lambda y: {"y": y * 1.01 + 0.001}
    engine = make_engine(tmp_path, Precision.INT8)
    assert require_engine_parity(engine, onnx_model)["profile"]["min_cosine"] == 0.99


def test_wrong_output_shape_is_named(tmp_path, onnx_model, stand_in):
    stand_in["change"] = lambda y: {"y": y[:, :2]}
    with pytest.raises(
        ParityError,
        match=r"^tiny\.fp32\.engine: output 'y' on random input #1 \(opt shapes\) has shape "
        r"\[4, 2\], the ONNX reference \[4, 3\]$",
    ):
        engine_parity(make_engine(tmp_path), onnx_model)
    assert stand_in["batches"] == [4]  # stopped at the first mismatch


def test_missing_output_is_named(tmp_path, onnx_model, stand_in):
    stand_in["change"] = lambda y: {"z": y}
    with pytest.raises(
        ParityError, match=r"^tiny\.fp32\.engine: output 'y' on random input #1 \(opt shapes\) has"
    ):
        engine_parity(make_engine(tmp_path), onnx_model)
