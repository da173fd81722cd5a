"""Reference I/O files that Polygraphy reads, and that torchship reads back."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from torchship.errors import ModelLoadError
from torchship.exporter import export_model, load_reference, save_reference
from torchship.loaded import LoadedModel
from torchship.specs import InputSpec, random_feeds

POLYGRAPHY = Path(sys.executable).parent / "polygraphy"


def sample_io():
    rng = np.random.default_rng(0)
    feeds = [
        {"x": rng.standard_normal((2, 3)).astype(np.float32), "ids": np.arange(4, dtype=np.int64)}
        for _ in range(2)
    ]
    outputs = [{"y": f["x"] * 2, "mask": f["ids"] > 1} for f in feeds]
    return feeds, outputs


def test_round_trip(tmp_path):
    feeds, outputs = sample_io()
    paths = save_reference(tmp_path, feeds_list=feeds, outputs_list=outputs)
    assert [p.name for p in paths] == ["reference_inputs.json", "reference_outputs.json"]
    got_feeds, got_outputs = load_reference(tmp_path)
    for want, got in zip(feeds + outputs, got_feeds + got_outputs, strict=True):
        assert list(got) == list(want)
        for name in want:
            assert got[name].dtype == want[name].dtype
            np.testing.assert_array_equal(got[name], want[name])


def test_polygraphy_json_loader_reads_our_files(tmp_path):
    from polygraphy.comparator import RunResults
    from polygraphy.json import load_json

    feeds, outputs = sample_io()
    inputs_path, outputs_path = save_reference(tmp_path, feeds_list=feeds, outputs_list=outputs)
    loaded_feeds = load_json(str(inputs_path))
    np.testing.assert_array_equal(loaded_feeds[1]["x"], feeds[1]["x"])
    results = RunResults.load(str(outputs_path))
    ((runner, iterations),) = list(results.items())
    assert runner == "torch-eager" and len(iterations) == 2
    np.testing.assert_array_equal(iterations[0]["mask"], outputs[0]["mask"])


def test_polygraphy_written_outputs_load(tmp_path):
    from polygraphy.comparator import IterationResult, RunResults

    results = RunResults()
    value = np.ones((2, 2), np.float32)
    results.append(("onnxrt-runner", [IterationResult({"y": value}, runner_name="onnxrt-runner")]))
    results.save(str(tmp_path / "reference_outputs.json"))
    save_reference(tmp_path / "ours", feeds_list=[{"x": value}], outputs_list=[{"y": value}])
    (tmp_path / "reference_inputs.json").write_text(
        (tmp_path / "ours" / "reference_inputs.json").read_text()
    )
    _, outputs = load_reference(tmp_path)
    np.testing.assert_array_equal(outputs[0]["y"], value)


def test_mismatched_lengths_are_rejected(tmp_path):
    feeds, outputs = sample_io()
    with pytest.raises(ValueError, match="2 input sets but 1 output sets"):
        save_reference(tmp_path, feeds_list=feeds, outputs_list=outputs[:1])


def test_missing_and_corrupt_files_name_the_file(tmp_path):
    with pytest.raises(ModelLoadError, match=r"reference_inputs\.json: no such reference file"):
        load_reference(tmp_path)
    feeds, outputs = sample_io()
    save_reference(tmp_path, feeds_list=feeds, outputs_list=outputs)
    (tmp_path / "reference_outputs.json").write_text("{not json")
    with pytest.raises(ModelLoadError, match=r"reference_outputs\.json: not readable JSON"):
        load_reference(tmp_path)
    (tmp_path / "reference_outputs.json").write_text(json.dumps({"lst": []}))
    with pytest.raises(ModelLoadError, match=r"reference_outputs\.json: not Polygraphy RunResults"):
        load_reference(tmp_path)


class Mlp(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(5, 8), nn.ReLU(), nn.Linear(8, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def _polygraphy_run(model_path: Path, ref_dir: Path) -> subprocess.CompletedProcess:
    command = [
        str(POLYGRAPHY), "run", str(model_path), "--onnxrt",
        "--load-inputs", str(ref_dir / "reference_inputs.json"),
        "--load-outputs", str(ref_dir / "reference_outputs.json"),
        "--atol", "1e-4", "--rtol", "1e-3",
    ]  # fmt: skip
    return subprocess.run(command, capture_output=True, text=True, timeout=300, check=False)


@pytest.mark.skipif(not POLYGRAPHY.exists(), reason="polygraphy CLI is not installed")
def test_polygraphy_cli_checks_exported_model(tmp_path):
    torch.manual_seed(0)
    spec = InputSpec("x", "float32", (2, 5), {0: "batch"})
    model = LoadedModel(Mlp().eval(), (spec,), ("logits",), source="test")
    (artifact,) = export_model(model, tmp_path, formats=["onnx"])
    feeds = [model.example, random_feeds(model.inputs, seed=1, batch=3)]
    save_reference(tmp_path, feeds_list=feeds, outputs_list=[model.run(f) for f in feeds])

    ok = _polygraphy_run(artifact.path, tmp_path)
    assert ok.returncode == 0, ok.stdout + ok.stderr

    _, outputs = load_reference(tmp_path)
    outputs[1]["logits"] = outputs[1]["logits"] + 0.5
    save_reference(tmp_path / "tampered", feeds_list=feeds, outputs_list=outputs)
    bad = _polygraphy_run(artifact.path, tmp_path / "tampered")
    assert bad.returncode != 0
    assert "FAILED" in bad.stdout + bad.stderr
