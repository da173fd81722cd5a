"""Fuzz the ONNX files torchship is handed (`bench`, `quantize`, `verify` open them): truncated
or corrupted bytes, wrong or absurd opsets and IR versions, odd element types and dims, and
external data pointing outside the model's folder (by path, absolutely, or through a symlink)."""

from __future__ import annotations

import math
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import onnx
import pytest
from fuzzing import check_failure, fuzz_settings
from hypothesis import given
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper

from torchship.artifact import Artifact
from torchship.calibration.quantize import QuantizeOptions, quantize
from torchship.cli import main
from torchship.errors import ToolchainError
from torchship.runtimes.base import get_runner
from torchship.specs import random_feeds

_SECRET = np.ones(4, np.float32).tobytes()  # what a leak of data outside the folder reads


def _model(dims: list, elem_type: int, opset: int, domain: str, ir_version: int) -> onnx.ModelProto:
    weight = numpy_helper.from_array(np.full((4,), 3.0, np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("Add", ["x", "w"], ["y"])], "g",
        [helper.make_tensor_value_info("x", elem_type, dims)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, dims)], [weight],
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid(domain, opset)])
    model.ir_version = ir_version
    return model


def _external(model: onnx.ModelProto, location: str, offset: int, length: int) -> None:
    tensor = model.graph.initializer[0]
    tensor.ClearField("raw_data")
    tensor.data_location = TensorProto.EXTERNAL
    for key, value in (("location", location), ("offset", offset), ("length", length)):
        entry = tensor.external_data.add()
        entry.key, entry.value = key, str(value)


_HOSTILE = ["dims", "elem_type", "opset", "ir_version", "external", "external", "external",
            "truncate", "flip", "garbage"]  # fmt: skip


@st.composite
def onnx_files(draw, folder: Path) -> Path:
    """A valid model with one or two hostile changes."""
    dims, elem, opset, domain, ir_version = [4], TensorProto.FLOAT, 18, "", 8
    changes = draw(st.lists(st.sampled_from(_HOSTILE), min_size=1, max_size=2, unique=True))
    if "dims" in changes:
        dims = draw(
            st.lists(
                st.one_of(
                    st.integers(-3, 6),
                    st.integers(2**31, 2**62),
                    st.sampled_from(["batch", "", "a b", "ü"]),
                ),
                max_size=4,
            )
        )
    if "elem_type" in changes:
        elem = draw(st.integers(0, 30))
    if "opset" in changes:
        opset = draw(st.one_of(st.integers(-5, 40), st.integers(10**6, 2**62)))
        domain = draw(st.sampled_from(["", "ai.onnx", "com.microsoft", "x"]))
    if "ir_version" in changes:
        ir_version = draw(st.integers(0, 30))
    model = _model(dims, elem, opset, domain, ir_version)
    if "external" in changes:
        location = draw(st.sampled_from(["data.bin", "../outside.bin", str(folder.parent /
                        "outside.bin"), "missing.bin", "sub/../../outside.bin", "link.bin",
                        "sub", "data.bin\0x", "", "./data.bin"]))  # fmt: skip
        offset = draw(st.one_of(st.just(0), st.integers(-5, 2**63)))
        length = draw(st.one_of(st.just(16), st.integers(-5, 2**63)))
        _external(model, location, offset, length)
    path = folder / "model.onnx"
    raw = model.SerializeToString()
    if "truncate" in changes:
        raw = raw[: draw(st.integers(0, len(raw) - 1))]
    if "flip" in changes:
        at = draw(st.integers(0, len(raw) - 1))
        raw = raw[:at] + bytes([raw[at] ^ draw(st.integers(1, 255))]) + raw[at + 1 :]
    if "garbage" in changes:
        raw = draw(st.binary(max_size=200))
    path.write_bytes(raw)
    return path


def _run(path: Path) -> None:
    """What bench and verify do with an ONNX file."""
    artifact = Artifact.open(path)
    with get_runner("ort-cpu")(artifact) as runner:
        if all(math.prod(s.shape) <= 1000 for s in artifact.inputs):
            zeros = {k: np.zeros_like(v) for k, v in random_feeds(artifact.inputs, seed=0).items()}
            for value in runner.infer(zeros).values():  # 0 + w: the weights it read
                assert not (value.size and np.all(value == 1.0)), "it read data outside its folder"


def _quantize(path: Path, out: Path) -> None:
    """What `torchship quantize --mode dynamic` does with it (no calibration data needed)."""
    quantize(path, out, options=QuantizeOptions(mode="dynamic", bench=False))


@fuzz_settings(400)
@given(st.data())
def test_any_onnx_file_runs_or_fails_in_one_line(data):
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        folder = root / "model"
        (folder / "sub").mkdir(parents=True)
        (root / "outside.bin").write_bytes(_SECRET)
        (folder / "data.bin").write_bytes(np.full(4, 2.0, np.float32).tobytes())
        os.symlink(root / "outside.bin", folder / "link.bin")
        path = data.draw(onnx_files(folder))
        before = sorted(p.name for p in root.rglob("*"))
        for use in (_run, lambda p: _quantize(p, root / "quantized")):
            try:
                use(path)
            except ToolchainError as exc:
                check_failure(exc)
            shutil.rmtree(root / "quantized", ignore_errors=True)
        assert sorted(p.name for p in root.rglob("*")) == before  # nothing else written
        assert (root / "outside.bin").read_bytes() == _SECRET


@pytest.mark.parametrize("location", ["link.bin", "../outside.bin", "missing.bin"])
def test_quantize_refuses_external_data_outside_the_folder_in_one_line(tmp_path, capsys, location):
    """Found by the search: ORT pre-processing failed, and the fallback's onnx.load raised
    ValidationError ("internal error", exit 1) for a symlinked external data file."""
    folder = tmp_path / "model"
    folder.mkdir()
    (tmp_path / "outside.bin").write_bytes(_SECRET)
    os.symlink(tmp_path / "outside.bin", folder / "link.bin")
    model = _model([4], TensorProto.FLOAT, 18, "", 8)
    _external(model, location, 0, 16)
    (folder / "model.onnx").write_bytes(model.SerializeToString())
    code = main(["quantize", str(folder / "model.onnx"), "--mode", "dynamic", "-o",
                 str(tmp_path / "q")])  # fmt: skip
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1, err
    assert f"keeps its data in {location!r}" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model", "outside.bin"]
