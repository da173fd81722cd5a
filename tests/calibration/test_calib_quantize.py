"""Static INT8 on the demo: every method and preset loads in ORT and meets its accuracy check."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest

from torchship.calibration import PRESETS, QuantizeOptions, count_ops, quantize
from torchship.cli.main import main
from torchship.errors import CalibrationError, ConfigError
from torchship.models import demo_dataset

FAST = {"bench": False, "threads": 2}


def _check_demo_result(result, demo_onnx):
    assert result.passed, result.report["warnings"]
    assert result.artifact.path.is_file() and result.artifact.precision.value == "int8"
    accuracy = result.report["accuracy"]
    assert accuracy["mode"] == "labels" and accuracy["drop"] <= 1.0
    manifest = json.loads(result.manifest_path.read_text())
    assert manifest["calibration"]["samples"] == 128
    assert len(manifest["calibration"]["sha256"]) == 64
    assert manifest["artifacts"][0]["precision"] == "int8"
    names = {f["path"] for f in manifest["files"]}
    assert {result.artifact.path.name, "quantize_report.json"} <= names


@pytest.mark.parametrize("method", ["minmax", "entropy", "percentile"])
def test_each_method_meets_the_budget_on_the_demo(tmp_path, demo_onnx, demo_files, method):
    result = quantize(
        demo_onnx,
        tmp_path / "out",
        calib=demo_files["calib"],
        eval_data=demo_files["eval"],
        options=QuantizeOptions(method=method, target="cpu-x86-vnni", **FAST),
    )
    _check_demo_result(result, demo_onnx)
    assert result.report["method"] == method
    assert result.report["op_counts"]["integer_ops"] > 10
    assert result.report["parity"]["passed"]


@pytest.mark.parametrize("target", [n for n in PRESETS.names() if n != "cpu-x86-vnni"])
def test_each_preset_meets_the_budget_on_the_demo(tmp_path, demo_onnx, demo_files, target):
    result = quantize(
        demo_onnx,
        tmp_path / "out",
        calib=demo_files["calib"],
        eval_data=demo_files["eval"],
        options=QuantizeOptions(target=target, **FAST),
    )
    _check_demo_result(result, demo_onnx)
    graph = onnx.load(str(result.artifact.path)).graph
    zero_points = {
        init.name: init.data_type for init in graph.initializer if "zero_point" in init.name
    }
    types = set(zero_points.values()) - {onnx.TensorProto.INT32}  # biases are int32
    if target == "tensorrt":
        assert types == {onnx.TensorProto.INT8}  # symmetric S8S8 explicit Q/DQ
        tables = {p.name for p in result.out_dir.iterdir()}
        assert {"calibration.flatbuffers", "calibration.json"} <= tables
    else:
        assert onnx.TensorProto.UINT8 in types  # U8 activations


def test_int8_timing_proof_is_recorded(tmp_path, demo_onnx, demo_files):
    # Speed itself is for scripts/bench_int8.py: on a loaded 2-core CI machine a timed assert
    # flakes (0.97x once, cv 0.28). Here: the same-run proof is there and self-consistent.
    result = quantize(
        demo_onnx,
        tmp_path / "out.int8.onnx",
        calib=demo_files["calib"],
        eval_data=demo_files["eval"],
        options=QuantizeOptions(target="cpu-x86-vnni", threads=2, bench_min_time_s=0.3),
    )
    assert result.artifact.path.name == "out.int8.onnx"
    timing = result.report["timing"]
    assert timing["runtime"] == "ort-cpu" and timing["batch"] == 8 and timing["threads"] == 2
    assert timing["p50_ms"] > 0 and timing["fp32_p50_ms"] > 0, timing
    assert timing["faster"] is (timing["speedup"] > 1.0)
    assert timing["timed"].startswith("interleaved")
    counts = count_ops(result.artifact.path)
    assert counts.float_compute == 0 and counts.integer_share == 1.0


def test_polygraphy_runs_the_int8_model_independently(tmp_path, demo_onnx, demo_files):
    from polygraphy.backend.onnxrt import OnnxrtRunner, SessionFromOnnx

    result = quantize(
        demo_onnx, tmp_path, calib=demo_files["calib"], eval_data=demo_files["eval"],
        options=QuantizeOptions(**FAST),
    )  # fmt: skip
    images, labels = demo_dataset("test")
    with OnnxrtRunner(SessionFromOnnx(str(result.artifact.path))) as runner:
        logits = runner.infer({"image": images[:64]})["logits"]
    assert np.mean(np.argmax(logits, axis=1) == labels[:64]) > 0.95


def test_static_without_calibration_data_is_a_usage_error(tmp_path, demo_onnx):
    with pytest.raises(ConfigError, match="static INT8 needs calibration data: pass --calib"):
        quantize(demo_onnx, tmp_path / "out", options=QuantizeOptions(**FAST))
    assert not (tmp_path / "out").exists()


def test_calibration_data_that_does_not_fit_is_refused(tmp_path, demo_onnx):
    bad = {"image": np.zeros((4, 3, 32, 32), np.float32)}
    with pytest.raises(CalibrationError, match=r"input 'image': shape \[4, 3, 32, 32\] given"):
        quantize(demo_onnx, tmp_path / "out", calib=bad, options=QuantizeOptions(**FAST))
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"method": "kl"}, r"unknown calibration method 'kl'; valid: entropy, minmax, percentile"),
        ({"mode": "hybrid"}, r"--mode 'hybrid': valid: static, dynamic"),
        ({"precision": "int4"}, r"--precision 'int4'"),
        ({"max_drop": -1.0}, r"--max-drop -1.0"),
        ({"max_excluded": -1}, r"--max-fp32-nodes -1: must be >= 0"),
        ({"threads": 0}, r"--threads 0: must be >= 1"),
    ],
)
def test_bad_options(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        QuantizeOptions(**kwargs)


def test_cli_quantize_exit_codes(tmp_path, demo_onnx, demo_files, capsys):
    out = tmp_path / "cli"
    args = ["quantize", str(demo_onnx.path), "--calib", str(demo_files["calib"])]
    args += ["--eval", str(demo_files["eval"]), "--no-bench", "-o", str(out)]
    assert main(args) == 0
    assert "result: pass" in capsys.readouterr().out
    assert main(["quantize", str(demo_onnx.path), "--target", "gpu", "-o", str(out)]) == 2
    assert "unknown quantization target 'gpu'" in capsys.readouterr().err
