"""The deployment search inside a pipeline: candidates built, measured rows ranked, release."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from torchship.artifact import Artifact, Format, Precision
from torchship.errors import ConfigError
from torchship.pipeline import parse_pipeline, plan_for
from torchship.pipeline.results import Measurement
from torchship.pipeline.step import PipelineState
from torchship.pipeline.steps import CandidatesStep, MeasureStep, ReleaseStep
from torchship.pipeline.steps.tables import ship_rows
from torchship.tune import Outcome

HEAD = '[pipeline]\nname = "m"\nversion = "1"\n[model]\nsource = "demo"\n'
QUANTIZE = '[quantize]\ncalib = "calib.npz"\n'


def _artifact(tmp_path: Path, name: str, fmt: Format, precision=Precision.FP32, **details):
    path = tmp_path / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x" * 10)
    return Artifact.create(
        path, format=fmt, inputs=[], outputs=["y"], precision=precision, details=details
    )


def _state(tmp_path: Path, rows) -> PipelineState:
    eager = Artifact.eager(torch.nn.Linear(2, 2), inputs=[], outputs=["y"])
    measured = [Measurement("reference/eager", "eager", eager, "torch", 8, 0.99, 8.0, 8.0)]
    for role, artifact, runtime, p50, accuracy in rows:
        label = artifact.path.relative_to(tmp_path).as_posix()
        measured.append(Measurement(role, label, artifact, runtime, 8, accuracy, p50, p50))
    state = PipelineState(bundle_dir=tmp_path, stage=tmp_path, measurements=tuple(measured))
    state.skipped["aoti int8"] = "torch._inductor refused the model"
    return state


def test_release_is_the_fastest_row_within_budget_and_the_others_say_why(tmp_path):
    onnx = _artifact(tmp_path, "model.onnx", Format.ONNX)
    int8 = _artifact(tmp_path, "int8/model.int8.onnx", Format.ONNX, Precision.INT8, passed=True)
    pte = _artifact(tmp_path, "int8-xnnpack/model.pte", Format.EXECUTORCH, Precision.INT8)
    state = _state(tmp_path, [
        ("int8/onnx", int8, "openvino", 1.0, 0.98),  # fastest, but 1 point down: over budget
        ("int8-xnnpack/executorch", pte, "executorch", 2.0, 0.99),
        ("fp32/onnx", onnx, "ort-cpu", 4.0, 0.99),
        ("int8/onnx", int8, "ort-cpu", 3.0, 0.99),
    ])  # fmt: skip
    step = ReleaseStep(max_drop=0.5)
    step(state)
    report = state.search
    outcomes = {r.candidate.name: r for r in report.results}
    assert report.results[0].candidate.name == "model.onnx on ort-cpu"  # the speed reference
    chosen = outcomes["int8-xnnpack/model.pte on executorch"]
    assert chosen.outcome is Outcome.CHOSEN and chosen.speedup == 2.0
    over = outcomes["int8/model.int8.onnx on openvino"]
    assert over.outcome is Outcome.FAILED and "drop 1.00 points > budget 0.5" in over.reason
    assert "slower" in outcomes["int8/model.int8.onnx on ort-cpu"].reason
    assert outcomes["aoti int8"].outcome is Outcome.SKIPPED
    assert state.release == {
        "artifact": "int8-xnnpack/model.pte", "runtime": "executorch", "precision": "int8",
        "drop_points": 0.0, "speedup_vs_onnx": 2.0, "reason": chosen.reason,
    }  # fmt: skip
    saved = json.loads((tmp_path / "tune_report.json").read_text())
    assert saved["chosen"] == chosen.candidate.name
    assert {c["artifact"] for c in saved["candidates"]} >= {"int8-xnnpack/model.pte", None}
    rows = {(r.name, r.runtime): r.check for r in ship_rows(state.measurements, {}, report)}
    assert rows[("int8-xnnpack/model.pte", "executorch")] == "pass, release"
    assert rows[("int8/model.int8.onnx", "openvino")] == "in budget, over budget"


def test_an_int8_file_that_missed_its_own_budget_is_never_the_release(tmp_path):
    onnx = _artifact(tmp_path, "model.onnx", Format.ONNX)
    int8 = _artifact(tmp_path, "int8/model.int8.onnx", Format.ONNX, Precision.INT8, passed=False)
    state = _state(tmp_path, [
        ("fp32/onnx", onnx, "ort-cpu", 4.0, 0.99),
        ("int8/onnx", int8, "ort-cpu", 1.0, 0.99),
    ])  # fmt: skip
    ReleaseStep()(state)
    assert state.release["artifact"] == "model.onnx"
    failed = next(r for r in state.search.results if r.artifact is int8)
    assert failed.outcome is Outcome.FAILED and "INT8 accuracy budget" in failed.reason


def test_the_measure_step_adds_the_runtimes_the_search_asked_for(tmp_path):
    onnx = _artifact(tmp_path, "model.onnx", Format.ONNX)
    step = MeasureStep(runtimes=("ort-cpu",))
    assert step._runtimes(onnx, ("openvino", "ort-cpu", "openvino-bf16")) == [
        "ort-cpu", "openvino", "openvino-bf16",
    ]  # fmt: skip


def test_the_search_declares_every_role_it_may_add():
    roles = CandidatesStep().provides()
    for role in ("aoti/aoti", "int8-xnnpack/executorch", "pruned/int8-x86-inductor/aoti",
                 "pruned/int8/onnx", "onnx/onnx"):  # fmt: skip
        assert role in roles


def test_a_tune_table_plans_the_search_around_the_measure_step(tmp_path):
    config = parse_pipeline(HEAD + QUANTIZE + "[tune]\nmax_drop = 1.0\ntime_budget_s = 60\n")
    steps = [type(s) for s in plan_for(config).build]
    assert steps.index(CandidatesStep) < steps.index(MeasureStep) < steps.index(ReleaseStep)
    search = next(s for s in plan_for(config).build if isinstance(s, CandidatesStep))
    assert (search.max_drop, search.time_budget_s, search.variants) == (1.0, 60.0, ("fp32",))
    assert ReleaseStep not in [type(s) for s in plan_for(parse_pipeline(HEAD)).build]


@pytest.mark.parametrize(
    "text, message",
    [
        ("[tune]\n", "needs calibration data for its INT8 candidates: set [quantize] calib"),
        (QUANTIZE + "[tune]\nmax_drop = 200\n", "must be 0..100 percentage points"),
        (QUANTIZE + "[tune]\ntime_budget_s = 0\n", "must be > 0"),
        (QUANTIZE + "[tune]\nbudget = 3\n", "budget"),
    ],
)
def test_a_bad_tune_table_is_refused_before_any_work(text, message):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace(".", r"\.")):
        parse_pipeline(HEAD + text)


def test_tune_without_eval_data_is_refused():
    head = HEAD.replace('source = "demo"', 'source = "pkg.mod:make"\ninputs = ["x:1x3"]')
    with pytest.raises(ConfigError, match=r"needs labelled eval data: set \[model\] eval"):
        parse_pipeline(head + QUANTIZE + "[tune]\n")
