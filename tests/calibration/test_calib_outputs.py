"""Where `quantize` writes, what it refuses to overwrite or re-quantize, fixed-batch models and
the CLI checks made before any work."""

from __future__ import annotations

import json
import shutil

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from torchship.artifact import Artifact, Precision
from torchship.calibration import QuantizeOptions, quantize
from torchship.cli.main import main
from torchship.errors import ConfigError
from torchship.files import sha256_file

FAST = {"bench": False, "threads": 2, "target": "cpu-x86-vnni", "max_drop": 100.0,
        "latency_search": False}  # fmt: skip


@pytest.fixture()
def export_dir(tmp_path, sensitive_case):
    """x/model.onnx with an export-style manifest that also describes model.ts."""
    artifact, calib, _ = sensitive_case
    folder = tmp_path / "x"
    folder.mkdir()
    shutil.copyfile(artifact.path, folder / "model.onnx")
    onnx_entry = Artifact.open(folder / "model.onnx", inputs=artifact.inputs).to_dict()
    ts_entry = {**onnx_entry, "path": "model.ts", "format": "torchscript"}
    manifest = {"schema": "torchship.manifest/1", "artifacts": [onnx_entry, ts_entry]}
    (folder / "manifest.json").write_text(json.dumps(manifest))
    return folder, calib


def test_output_onto_the_fp32_source_is_refused(export_dir, capsys):
    folder, calib = export_dir
    source = folder / "model.onnx"
    before = sha256_file(source)
    assert main(["quantize", str(source), "--calib", str(calib), "-o", str(source)]) == 2
    assert "that is the FP32 source itself" in capsys.readouterr().err
    assert sha256_file(source) == before


@pytest.mark.parametrize("out", [".", "model.int8.onnx"])
def test_output_into_a_folder_with_another_manifest_is_refused(export_dir, out):
    folder, calib = export_dir
    manifest = (folder / "manifest.json").read_text()
    with pytest.raises(ConfigError, match=r"manifest\.json describes model\.onnx, model\.ts; .*"
                       r"subfolder instead, e\.g\. -o .*x/model-int8$"):  # fmt: skip
        quantize(folder / "model.onnx", folder / out, calib=calib, options=QuantizeOptions(**FAST))
    assert (folder / "manifest.json").read_text() == manifest
    assert sorted(p.name for p in folder.iterdir()) == ["manifest.json", "model.onnx"]


def test_default_output_reruns_and_the_int8_file_is_not_quantized_again(export_dir):
    folder, calib = export_dir
    for _ in range(2):  # the second run replaces the first one's quantize output
        result = quantize(folder / "model.onnx", calib=calib, options=QuantizeOptions(**FAST))
        assert result.artifact.path == folder / "model-int8" / "model.int8.onnx"
    assert Artifact.open(folder / "model.onnx").precision is Precision.FP32
    bare = folder / "bare"
    bare.mkdir()
    shutil.copyfile(result.artifact.path, bare / "model.int8.onnx")  # no manifest beside it
    with pytest.raises(ConfigError, match=r"model\.int8\.onnx: already quantized \(it has .*"
                       r"DequantizeLinear"):  # fmt: skip
        quantize(bare / "model.int8.onnx", calib=calib, options=QuantizeOptions(**FAST))


@pytest.fixture(scope="module")
def fixed_batch_model(tmp_path_factory):
    """x[8, 16] -> MatMul -> Relu -> MatMul -> logits[8, 4]: a batch axis fixed at 8."""
    rng = np.random.default_rng(0)
    w1 = numpy_helper.from_array(rng.standard_normal((16, 32)).astype(np.float32), "w1")
    w2 = numpy_helper.from_array(rng.standard_normal((32, 4)).astype(np.float32), "w2")
    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["h"], name="first"),
        helper.make_node("Relu", ["h"], ["r"], name="relu"),
        helper.make_node("MatMul", ["r", "w2"], ["logits"], name="head"),
    ]
    graph = helper.make_graph(
        nodes, "fixed", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [8, 16])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [8, 4])], [w1, w2],
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path = tmp_path_factory.mktemp("fixed") / "fixed.onnx"
    onnx.save(model, str(path))
    return path


def test_fixed_batch_model_takes_sample_counts_that_are_not_a_multiple(tmp_path, fixed_batch_model):
    calib = {"x": np.random.default_rng(1).standard_normal((20, 16)).astype(np.float32)}
    result = quantize(
        fixed_batch_model, tmp_path / "out", calib=calib,
        options=QuantizeOptions(samples=10, **FAST),
    )  # fmt: skip
    report = result.report
    # Calibration fed one full batch of 8; the eval pass (on the same 10 samples, no --eval)
    # padded the last batch and scored all 10.
    assert report["calibration"]["samples"] == 8
    assert report["calibration"]["dropped_samples"] == 2
    assert report["eval"]["samples"] == 10 and report["eval"]["padding_rows"] == 6
    assert report["eval"]["sha256"] != report["calibration"]["sha256"]
    assert report["accuracy"]["samples"] == 10
    assert any("2 samples left out" in w for w in report["warnings"])


def _quantize_args(sensitive_case, out):
    artifact, calib, evaluation = sensitive_case
    args = ["quantize", str(artifact.path), "--calib", str(calib), "--eval", str(evaluation)]
    return args + ["--no-bench", "--target", "cpu-x86-vnni", "-o", str(out)]


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--max-fp32-nodes", "-1"], "--max-fp32-nodes -1: must be >= 0"),
        (["--threads", "0"], "--threads 0: must be >= 1"),
        (["--json", "{tmp}"], "is a directory; give a file path"),
    ],
)
def test_cli_refuses_bad_flags_before_any_work(tmp_path, sensitive_case, capsys, extra, message):
    out = tmp_path / "out"
    extra = [e.replace("{tmp}", str(tmp_path)) for e in extra]
    assert main(_quantize_args(sensitive_case, out) + extra) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()
