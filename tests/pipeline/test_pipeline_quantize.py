"""The quantize step as the demo configures it: the INT8 rows `torchship ship` adds."""

from __future__ import annotations

import json
import time

from torchship.models import demo_dataset
from torchship.pipeline.demo import demo_plan
from torchship.pipeline.step import CALIB, EVAL
from torchship.pipeline.steps import QuantizeStep
from torchship.runtimes import BenchConfig


def _demo_quantize_step() -> QuantizeStep:
    plan = demo_plan(prune=False, bench_config=BenchConfig(batches=(8,), threads=2))
    return next(s for s in plan.build if isinstance(s, QuantizeStep))


def test_demo_quantize_step_on_the_demo(staged_state, demo_model, demo_onnx):
    train, _ = demo_dataset("train")
    images, labels = demo_dataset("test")
    state = staged_state(
        models={"fp32": demo_model},
        artifacts={"fp32/onnx": demo_onnx},
        data={CALIB: {"image": train[:256]}, EVAL: {"image": images, "labels": labels}},
    )
    start = time.perf_counter()
    result = _demo_quantize_step()(state)
    assert time.perf_counter() - start < 30
    # The demo is conv-heavy: static INT8 only (dynamic INT8 would leave its convs in FP32).
    (artifact,) = result.artifacts.values()
    assert list(result.artifacts) == ["int8/onnx"] and state.origins == {"int8/onnx": "fp32/onnx"}
    assert artifact.path == state.stage / "int8" / "model.int8.onnx"
    assert artifact.details["passed"] and artifact.details["accuracy"]["drop"] <= 1.0
    assert artifact.details["calibration"]["samples"] == 256
    manifest = json.loads((state.stage / "int8" / "manifest.json").read_text())
    assert manifest["artifacts"][0]["sha256"] == artifact.sha256
