"""Reading an ONNX file's inputs and outputs back as InputSpecs."""

from __future__ import annotations

import onnx
import pytest
from onnx import TensorProto, helper

from torchship.errors import ExportError, ModelLoadError
from torchship.exporter.onnx_export import conform_onnx_io
from torchship.onnx_io import onnx_io
from torchship.specs import InputSpec


def _save(tmp_path, inputs, outputs, initializers=()):
    node = helper.make_node("Identity", [inputs[0].name], [outputs[0].name])
    graph = helper.make_graph([node], "g", inputs, outputs, initializer=list(initializers))
    path = tmp_path / "m.onnx"
    onnx.save(helper.make_model(graph), str(path))
    return path


def test_reads_dtypes_dims_and_skips_initializers(tmp_path):
    inputs = [
        helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "seq"]),
        helper.make_tensor_value_info("mask", TensorProto.BOOL, [None, 4]),
        helper.make_tensor_value_info("w", TensorProto.FLOAT, [2]),
    ]
    outputs = [helper.make_tensor_value_info("out", TensorProto.INT64, ["batch", "seq"])]
    weight = helper.make_tensor("w", TensorProto.FLOAT, [2], [1.0, 2.0])
    specs, names = onnx_io(_save(tmp_path, inputs, outputs, [weight]))
    assert names == ["out"]
    ids, mask = specs
    assert (ids.name, ids.dtype, ids.shape, ids.dynamic) == (
        "input_ids",
        "int64",
        (1, 1),
        {0: "batch", 1: "seq"},
    )
    assert (mask.dtype, mask.shape, mask.dynamic) == ("bool", (1, 4), {0: "dim0"})


def test_unsupported_dtype_names_the_input(tmp_path):
    inputs = [helper.make_tensor_value_info("x", TensorProto.BFLOAT16, [2])]
    outputs = [helper.make_tensor_value_info("y", TensorProto.BFLOAT16, [2])]
    with pytest.raises(ModelLoadError, match="input 'x' has element type BFLOAT16; supported:"):
        onnx_io(_save(tmp_path, inputs, outputs))


def test_corrupt_file_names_the_file(tmp_path):
    path = tmp_path / "broken.onnx"
    path.write_bytes(b"\x00\xffnot an onnx model at all")
    with pytest.raises(ModelLoadError, match=r"broken\.onnx: not a readable ONNX model"):
        onnx_io(path)


def test_missing_file_names_the_file(tmp_path):
    with pytest.raises(ModelLoadError, match=r"absent\.onnx: not a readable ONNX model"):
        onnx_io(tmp_path / "absent.onnx")


def _identity_model(tmp_path, in_dims, out_dims):
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, in_dims)]
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, out_dims)]
    return _save(tmp_path, inputs, outputs)


def test_conform_renames_exporter_dims_to_spec_names(tmp_path):
    path = _identity_model(tmp_path, ["s0", 3], ["s0", 3])
    spec = InputSpec("x", "float32", (2, 3), {0: "batch"})
    conform_onnx_io(path, (spec,), ("y",))
    specs, _ = onnx_io(path)
    assert specs[0].dynamic == {0: "batch"}
    out = onnx.load(str(path)).graph.output[0]
    assert out.type.tensor_type.shape.dim[0].dim_param == "batch"


def test_conform_rejects_fixed_dynamic_dim_and_wrong_dtype(tmp_path):
    path = _identity_model(tmp_path, [2, 3], [2, 3])
    spec = InputSpec("x", "float32", (2, 3), {0: "batch"})
    with pytest.raises(ExportError, match="input 'x' axis 0 is fixed at 2, expected dynamic dim"):
        conform_onnx_io(path, (spec,), ("y",))
    wrong = InputSpec("x", "int64", (2, 3))
    with pytest.raises(ExportError, match="input 'x' has dtype float32, expected int64"):
        conform_onnx_io(path, (wrong,), ("y",))
    with pytest.raises(ExportError, match=r"graph outputs \['y'\], expected \['logits'\]"):
        conform_onnx_io(path, (InputSpec("x", "float32", (2, 3)),), ("logits",))
