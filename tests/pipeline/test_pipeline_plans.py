"""The demo and a `pipeline.toml` are plans of the same steps, run by the same runner."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from torchship.artifact import Artifact, Format, Precision
from torchship.pipeline import demo_plan, parse_pipeline, plan_for, run_pipeline, ship_demo
from torchship.pipeline.results import Measurement
from torchship.pipeline.steps import (
    CandidatesStep,
    EnginesStep,
    ExportStep,
    LoadStep,
    MeasureStep,
    PruneStep,
    QuantizeStep,
    ReferencesStep,
    ReleaseStep,
    ReportKind,
    ReportStep,
    SavePrunedStep,
    ShipTableStep,
)
from torchship.pipeline.steps.tables import ship_rows

HEAD = '[pipeline]\nname = "demo"\nversion = "1.0"\n[model]\nsource = "demo"\n'
STEPS = '[quantize]\npresets = ["auto", "tensorrt"]\n[engines]\nprecisions = ["fp16", "int8"]\n'
PRUNE = "[prune]\nratio = 0.5\n"


def test_the_demo_plan_is_the_pipeline_steps_configured_for_the_demo():
    plan = demo_plan("out")
    assert [type(s) for s in plan.prepare] == [LoadStep, PruneStep]
    assert [type(s) for s in plan.build] == [
        ExportStep, QuantizeStep, SavePrunedStep, QuantizeStep, CandidatesStep, EnginesStep,
        ReferencesStep, MeasureStep, ReleaseStep, ShipTableStep, ReportStep,
    ]  # fmt: skip
    load, prune = plan.prepare
    assert load.source == "demo" and set(load.data) == {"eval", "train", "calib"}
    assert prune.into == "pruned" and prune.ratio == 0.5 and prune.epochs == 10
    int8, _, pruned_int8 = plan.build[1:4]
    assert (int8.source, pruned_int8.source) == ("fp32/onnx", "pruned/onnx")
    assert [(j.role, j.folder) for j in pruned_int8.jobs] == [
        ("pruned/int8/onnx", "pruned/int8"),
        ("pruned/int8-dynamic/onnx", "pruned/int8-dynamic"),
    ]
    assert plan.build[-1].kind is ReportKind.SHIP and plan.bundle_dir == Path("out")
    bare = demo_plan("out", int8=False, prune=False, tune=False)
    assert not any(
        isinstance(s, QuantizeStep | PruneStep | CandidatesStep | ReleaseStep) for s in bare.steps
    )


def test_a_pipeline_file_plans_the_same_step_classes():
    plan = plan_for(parse_pipeline(HEAD + PRUNE + STEPS, path=Path("/work/pipeline.toml")))
    demo = {type(s) for s in demo_plan("out", tune=False).steps} - {SavePrunedStep, ShipTableStep}
    assert demo <= {type(s) for s in plan.steps}
    load, prune = plan.prepare
    assert load.roles == ("reference",) and prune.into == "fp32"  # pruned before export
    quantize = next(s for s in plan.build if isinstance(s, QuantizeStep))
    assert [j.folder for j in quantize.jobs] == ["int8-auto", "int8-tensorrt"]
    engines = next(s for s in plan.build if isinstance(s, EnginesStep))
    assert engines.precisions == (Precision.FP16,)
    assert engines.int8_source == "int8-tensorrt/onnx"  # by role, not by folder name
    assert plan.bundle_dir == Path("/work/dist/demo-1.0")


class _Stop(Exception):
    pass


def test_the_demo_and_a_pipeline_file_run_through_the_same_steps(tmp_path, monkeypatch):
    seen = []

    def stop(self, state):
        seen.append(sorted(state.models))
        raise _Stop

    monkeypatch.setattr(ExportStep, "run", stop)
    with pytest.raises(_Stop):
        ship_demo(tmp_path / "demo", int8=False, prune=False)
    path = tmp_path / "pipeline.toml"
    path.write_text(HEAD + STEPS)
    with pytest.raises(_Stop):
        run_pipeline(parse_pipeline(path.read_text(), path=path))
    assert seen == [["fp32", "reference"], ["fp32", "reference"]]
    # neither left a bundle or a staging folder behind
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dist", "pipeline.toml"]
    assert list((tmp_path / "dist").iterdir()) == []


def _measured(role: str, artifact: Artifact, runtime: str, p50: float, accuracy: float):
    label = "eager" if artifact.format is Format.EAGER else artifact.path.name
    return Measurement(role, label, artifact, runtime, 8, accuracy, p50, p50)


def test_ship_rows_mark_an_int8_row_slower_than_its_source_role(tmp_path):
    def artifact(name, fmt, precision=Precision.FP32, **details):
        (tmp_path / name).write_bytes(b"x" * 10)
        return Artifact.create(
            tmp_path / name, format=fmt, inputs=[], outputs=["y"], precision=precision,
            details=details,
        )  # fmt: skip

    eager = Artifact.eager(torch.nn.Linear(2, 2), inputs=[], outputs=["y"])
    onnx = artifact("model.onnx", Format.ONNX)
    int8 = artifact("model.int8.onnx", Format.ONNX, Precision.INT8, passed=True)
    measured = [
        _measured("reference/eager", eager, "torch", 8.0, 0.99),
        _measured("fp32/onnx", onnx, "ort-cpu", 4.0, 0.99),
        _measured("int8/onnx", int8, "ort-cpu", 5.0, 0.985),
    ]
    rows = ship_rows(measured, {"int8/onnx": "fp32/onnx"})
    assert [r.check for r in rows] == ["reference", "pass", "in budget, slower"]
    assert [r.speedup_vs_onnx for r in rows] == [0.5, 1.0, 0.8]
    assert [r.speedup_vs_eager for r in rows] == [1.0, 2.0, 1.6]
    assert rows[2].drop_points == 0.5
    # without the origin the same row is not judged against anything
    assert ship_rows(measured, {})[2].check == "in budget"


def test_ship_rows_say_fp32_shipped_when_the_latency_search_chose_it(tmp_path):
    """The int8 role then holds the FP32 graph: timing noise must not mark it "slower"."""
    (tmp_path / "model.onnx").write_bytes(b"x" * 10)
    (tmp_path / "model.int8.onnx").write_bytes(b"x" * 10)
    eager = Artifact.eager(torch.nn.Linear(2, 2), inputs=[], outputs=["y"])
    onnx = Artifact.create(tmp_path / "model.onnx", format=Format.ONNX, inputs=[], outputs=["y"])
    shipped = Artifact.create(
        tmp_path / "model.int8.onnx", format=Format.ONNX, inputs=[], outputs=["y"],
        details={"passed": True, "shipped": "fp32"},
    )  # fmt: skip
    measured = [
        _measured("reference/eager", eager, "torch", 8.0, 0.99),
        _measured("fp32/onnx", onnx, "ort-cpu", 4.0, 0.99),
        _measured("int8/onnx", shipped, "ort-cpu", 4.1, 0.99),
    ]
    rows = ship_rows(measured, {"int8/onnx": "fp32/onnx"})
    assert rows[2].check == "in budget, FP32 shipped: INT8 was slower"
    assert rows[2].precision == "fp32"
