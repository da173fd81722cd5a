"""`[tune]` in a pipeline.toml: the search's rows in the bundle, its report and the release."""

from __future__ import annotations

import json

import numpy as np
import pytest

from torchship.cli import main
from torchship.models import demo_dataset
from torchship.pipeline.steps import tune as tune_step
from torchship.runtimes import available_runners
from torchship.tune import default_candidates


@pytest.mark.slow
def test_a_tune_table_measures_the_candidates_and_names_the_release(
    tmp_path, pipeline_file, monkeypatch
):
    # The ONNX-based candidates only: AOTInductor/ExecuTorch builds are the demo's test.
    cheap = [c for c in default_candidates() if c.runtime in ("ort-cpu", "openvino")]
    monkeypatch.setattr(tune_step, "default_candidates", lambda: cheap)
    images, _ = demo_dataset("train")
    np.savez(tmp_path / "calib.npz", image=images[:64])
    extra = '\n[quantize]\ncalib = "calib.npz"\n[tune]\nmax_drop = 0.5\n'
    path = pipeline_file(tmp_path)
    path.write_text(path.read_text().replace("\n[bench]", extra + "\n[bench]"))
    assert main(["ship", str(path)]) == 0
    bundle = tmp_path / "dist" / "demo-1.0"
    manifest = json.loads((bundle / "manifest.json").read_text())
    search = json.loads((bundle / "tune_report.json").read_text())
    names = [c["name"] for c in search["candidates"]]
    assert names[0] == "model.onnx on ort-cpu"  # the speed reference
    assert "int8-auto/model.int8.onnx on ort-cpu" in names
    if "openvino" in available_runners():
        assert "model.onnx on openvino" in names
        assert "int8-auto/model.int8.onnx on openvino" in names
    chosen = [c for c in search["candidates"] if c["outcome"] == "chosen"]
    assert len(chosen) == 1 and manifest["release"]["artifact"] == chosen[0]["artifact"]
    assert manifest["release"]["drop_points"] <= 0.5
    assert main(["verify", str(bundle)]) == 0
