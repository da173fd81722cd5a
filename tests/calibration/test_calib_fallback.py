"""The accuracy budget: a model with one very sensitive layer ends with that layer in FP32."""

from __future__ import annotations

import json

import pytest

from torchship.calibration import QuantizeOptions, quantize
from torchship.calibration.accuracy import Accuracy
from torchship.calibration.sensitivity import fallback_loop
from torchship.cli.main import main

FAST = {"bench": False, "threads": 2, "target": "cpu-x86-vnni", "latency_search": False}


def test_sensitive_layer_is_kept_in_fp32_within_budget(tmp_path, sensitive_case):
    artifact, calib, evaluation = sensitive_case
    result = quantize(
        artifact, tmp_path / "out", calib=calib, eval_data=evaluation,
        options=QuantizeOptions(max_drop=1.0, **FAST),
    )  # fmt: skip
    fallback = result.report["fallback"]
    assert fallback["initial_drop"] > 50  # full INT8 destroys it
    assert fallback["excluded_nodes"] == ["/sensitive/Gemm"]
    assert fallback["steps"][0]["gained_points"] > 50
    assert result.passed and result.report["accuracy"]["drop"] <= 1.0
    assert result.artifact.details["excluded_nodes"] == ["/sensitive/Gemm"]
    manifest = json.loads(result.manifest_path.read_text())
    assert manifest["quantization"]["fallback"]["excluded_nodes"] == ["/sensitive/Gemm"]


def test_budget_missed_still_writes_the_best_artifact_marked_failing(
    tmp_path, sensitive_case, capsys
):
    artifact, calib, evaluation = sensitive_case
    out = tmp_path / "fail"
    args = ["quantize", str(artifact.path), "--calib", str(calib), "--eval", str(evaluation)]
    args += ["--max-fp32-nodes", "0", "--no-bench", "--target", "cpu-x86-vnni", "-o", str(out)]
    assert main(args) == 1
    report = json.loads((out / "quantize_report.json").read_text())
    assert report["passed"] is False
    assert any("accuracy budget missed" in w for w in report["warnings"])
    # Full INT8 also fails parity; the reason is a warning, so the CLI prints it.
    assert report["parity"]["passed"] is False
    assert any(w.startswith("parity vs FP32 failed: min cosine") for w in report["warnings"])
    assert "parity vs FP32 failed: min cosine" in capsys.readouterr().out
    assert (out / "model.int8.onnx").is_file()
    assert json.loads((out / "manifest.json").read_text())["gates"]["passed"] is False


def _acc(drop: float) -> Accuracy:
    return Accuracy("agreement", 10, drop, 1 - drop / 100, 1.0)


def test_greedy_loop_orders_by_sensitivity_and_stops_at_the_budget():
    drops = {(): 30.0, ("a",): 29.0, ("b",): 10.0, ("c",): 20.0, ("b", "c"): 0.5}
    seen = []

    def evaluate(excluded):
        seen.append(excluded)
        return _acc(drops.get(excluded, 25.0))

    result = fallback_loop([("a", "Conv"), ("b", "Conv"), ("c", "Gemm")], evaluate, max_drop=1.0)
    assert result.excluded == ("b", "c") and result.passed
    assert [s.node for s in result.steps] == ["b", "c"]
    assert ("a", "b", "c") not in seen


@pytest.mark.parametrize("cap", [0, 1])
def test_loop_keeps_the_best_when_the_budget_cannot_be_met(cap):
    drops = {(): 30.0, ("a",): 5.0, ("b",): 20.0}
    result = fallback_loop(
        [("a", "Conv"), ("b", "Conv")], lambda ex: _acc(drops.get(ex, 40.0)),
        max_drop=1.0, max_excluded=cap,
    )  # fmt: skip
    assert not result.passed
    assert result.excluded == (() if cap == 0 else ("a",))
