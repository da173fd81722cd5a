"""`quantize_for_ship`: the INT8 rows `torchship ship` adds for the demo."""

from __future__ import annotations

import json
import time

from torchship.calibration.ship import quantize_for_ship
from torchship.models import demo_dataset


def test_quantize_for_ship_on_the_demo(tmp_path, demo_model, demo_onnx):
    train, _ = demo_dataset("train")
    images, labels = demo_dataset("test")
    start = time.perf_counter()
    artifacts = quantize_for_ship(
        demo_model, demo_onnx, tmp_path, calib={"image": train[:256]},
        eval_images=images, eval_labels=labels, threads=2,
    )  # fmt: skip
    assert time.perf_counter() - start < 30
    # The demo is conv-heavy: static INT8 only (dynamic INT8 would leave its convs in FP32).
    (artifact,) = artifacts
    assert artifact.path == tmp_path / "int8" / "model.int8.onnx"
    assert artifact.details["passed"] and artifact.details["accuracy"]["drop"] <= 1.0
    assert artifact.details["calibration"]["samples"] == 256
    manifest = json.loads((tmp_path / "int8" / "manifest.json").read_text())
    assert manifest["artifacts"][0]["sha256"] == artifact.sha256
