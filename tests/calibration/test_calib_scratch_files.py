"""ORT's quantization pre-processing writes scratch files into the working directory when its
symbolic shape inference is incomplete (transformers: 90 MB); none may land in the user's."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference

from torchship.calibration.ort_quantize import preprocess


def _incomplete(self) -> bool:
    """What ORT's inference returns on a graph it cannot finish: stop, shapes unknown."""
    self.run_ = False
    return False


def test_preprocess_leaves_no_scratch_file_in_the_working_directory(tmp_path, monkeypatch):
    weight = numpy_helper.from_array(np.ones((4, 4), np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])], [weight],
    )  # fmt: skip
    src = tmp_path / "model.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), src)
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    monkeypatch.setattr(SymbolicShapeInference, "_infer_impl", _incomplete)
    ran = preprocess(src, tmp_path / "pre.onnx")
    assert ran == "no symbolic shapes"  # the first attempt hit the incomplete inference
    assert sorted(p.name for p in work.iterdir()) == []  # no sym_shape_infer_temp.onnx here
    assert (tmp_path / "pre.onnx").is_file()
