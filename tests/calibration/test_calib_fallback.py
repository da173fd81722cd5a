"""The accuracy fallback: the sensitive layer ends in FP32, found by bisection over the
sensitivity ranking in O(log n) trials, stopped early when the budget is out of reach and at
the time limit."""

from __future__ import annotations

import json
import math

import onnx

from torchship.calibration import QuantizeOptions, quantize
from torchship.calibration.accuracy import Accuracy
from torchship.calibration.fallback import FallbackResult
from torchship.calibration.metrics import Budget, Metric
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
    ranking = fallback["sensitivity"]
    assert max(ranking, key=ranking.get) == "/sensitive/Gemm"
    assert fallback["tried"] <= 4 and fallback["final_drop"] <= 1.0
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


def _bad_nodes_case(n: int, bad: int):
    """n candidates; every one of the first `bad` left in INT8 costs 2 points."""
    names = [f"n{i}" for i in range(n)]
    sensitive = set(names[:bad])
    seen = []

    def evaluate(excluded):
        seen.append(excluded)
        return _acc(2.0 * len(sensitive - set(excluded)))

    scores = {name: (1.0 if name in sensitive else 0.0) + i * 1e-6 for i, name in enumerate(names)}
    return [(name, "MatMul") for name in reversed(names)], evaluate, scores, seen


def test_bisection_keeps_the_sensitive_nodes_in_log_n_trials():
    candidates, evaluate, scores, seen = _bad_nodes_case(64, bad=5)
    result = fallback_loop(
        candidates, evaluate, budget=Budget(Metric.AGREEMENT, 1.0), rank=lambda: scores
    )
    assert result.passed and set(result.excluded) == {f"n{i}" for i in range(5)}
    # full INT8 + all-FP32 feasibility + log2(64) bisection steps, not one build per node
    assert len(seen) == len(result.trials) <= 2 + math.ceil(math.log2(64))
    assert result.stopped.startswith("bisection: the 5 most sensitive of 64 nodes")
    report = result.to_dict()
    assert report["tried"] == len(seen) and report["candidates"] == 64
    assert not result.all_fp32


def test_an_unreachable_budget_stops_after_the_feasibility_trial():
    calls = []

    def evaluate(excluded):
        calls.append(excluded)
        return _acc(30.0 if not excluded else 5.0)

    ranked = []
    result = fallback_loop(
        [("a", "Conv"), ("b", "Conv")], evaluate, budget=Budget(Metric.AGREEMENT, 1.0),
        rank=lambda: ranked.append(1) or {},
    )  # fmt: skip
    assert not result.passed and len(calls) == 2 and not ranked  # no ranking, no bisection
    assert "budget unreachable: even with all of the 2 candidate nodes in FP32" in result.stopped
    assert result.excluded == ("a", "b")  # the lowest loss seen is kept, marked failing


def test_the_time_limit_stops_the_bisection_with_a_clear_reason():
    candidates, evaluate, scores, seen = _bad_nodes_case(64, bad=5)
    now = [0.0]

    def slow(excluded):
        now[0] += 50.0  # each build + eval takes 50 s
        return evaluate(excluded)

    result = fallback_loop(
        candidates, slow, budget=Budget(Metric.AGREEMENT, 1.0), rank=lambda: scores,
        max_time_s=120.0, clock=lambda: now[0],
    )  # fmt: skip
    assert result.stopped == "stopped at the --max-fallback-time limit of 120 s after 4 trials"
    assert len(seen) == 4 and result.passed  # the best passing configuration found so far
    assert set(result.excluded) >= {f"n{i}" for i in range(5)}


def test_the_cap_on_fp32_nodes_ranks_first_and_tries_only_the_cap():
    candidates, evaluate, scores, seen = _bad_nodes_case(16, bad=5)
    result = fallback_loop(
        candidates, evaluate, budget=Budget(Metric.AGREEMENT, 1.0), rank=lambda: scores,
        max_excluded=3,
    )  # fmt: skip
    assert not result.passed and max(len(ex) for ex in seen) == 3
    assert "the 3 most sensitive (--max-fp32-nodes)" in result.stopped


def test_fallback_time_limit_from_the_cli(tmp_path, sensitive_case, capsys):
    artifact, calib, evaluation = sensitive_case
    out = tmp_path / "timed"
    args = ["quantize", str(artifact.path), "--calib", str(calib), "--eval", str(evaluation)]
    args += ["--no-bench", "--target", "cpu-x86-vnni", "--max-fallback-time", "0.001"]
    args += ["--ptq-algos", "none", "--no-latency-search"]  # the fallback alone
    assert main([*args, "-o", str(out)]) == 1
    report = json.loads((out / "quantize_report.json").read_text())
    assert report["fallback"]["stopped"].startswith("stopped at the --max-fallback-time limit")
    assert report["fallback"]["all_fp32"] and report["passed"] is False
    printed = capsys.readouterr().out
    assert "raise --max-fallback-time" in printed
    assert "the accuracy fallback kept all 3 quantizable nodes in FP32" in printed


def test_dynamic_int8_ranks_the_sensitive_layer_first_by_its_own_error(tmp_path, sensitive_case):
    artifact, _, evaluation = sensitive_case
    result = quantize(
        artifact, tmp_path / "dyn", eval_data=evaluation,
        options=QuantizeOptions(mode="dynamic", max_drop=0.0, bench=False, threads=2),
    )  # fmt: skip
    ranking = result.report["fallback"]["sensitivity"]
    assert set(ranking) == {"/first/Gemm", "/sensitive/Gemm", "/head/Gemm"}
    assert max(ranking, key=ranking.get) == "/sensitive/Gemm"
    # ORT's dynamic pass renames a Gemm to <name>_MatMul before its exclusion check
    assert "/sensitive/Gemm" in result.report["fallback"]["excluded_nodes"]
    graph = onnx.load(str(result.artifact.path)).graph
    assert "/sensitive/Gemm_MatMul" in {n.name for n in graph.node if n.op_type == "MatMul"}


def test_all_fp32_reads_candidate_names_not_how_many_nodes_are_excluded():
    # the latency search keeps whole regions (activations too) in FP32: 3 excluded nodes of
    # which 2 are not candidates still leave a quantized conv
    def result(excluded):
        return FallbackResult(excluded, None, True, None, candidates=2, names=("conv1", "conv2"))

    assert not result(("conv1", "relu1", "mul1")).all_fp32
    assert result(("conv1", "relu1", "conv2")).all_fp32
