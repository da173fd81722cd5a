"""The deployment search: it picks the fastest verified candidate and says why others lost."""

from __future__ import annotations

import json
from collections.abc import Callable

import numpy as np
import pytest
import torch

from torchship.artifact import Artifact
from torchship.errors import ConfigError
from torchship.loaded import LoadedModel
from torchship.runtimes import BenchConfig
from torchship.specs import InputSpec
from torchship.tune import Builds, Candidate, Outcome, default_candidates, search

SPEC = InputSpec(name="x", dtype="float32", shape=(2, 4), dynamic={0: "batch"})


class Scaled(torch.nn.Module):
    """y = x @ w * scale: a negative scale flips every prediction (an over-budget candidate)."""

    def __init__(self, scale: float) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.w, self.scale = torch.nn.Parameter(torch.randn(4, 3)), scale

    def forward(self, x):
        return x @ self.w * self.scale


@pytest.fixture()
def builds(tmp_path):
    model = LoadedModel(Scaled(1.0).eval(), (SPEC,), ("y",), source="scaled")
    rng = np.random.default_rng(0)
    data = {"x": rng.standard_normal((40, 4)).astype(np.float32)}
    return Builds(model, tmp_path, calib=data, eval_data=data, max_drop=0.5, threads=1)


def _eager(scale: float) -> Callable:
    module = Scaled(scale).eval()
    return lambda builds: Artifact.eager(module, inputs=(SPEC,), outputs=("y",))


def _fake_times(times: dict[float, float]):
    """measure() by the candidate module's scale: deterministic p50s, no timing."""
    return lambda runtime, artifact: (times[artifact.module.scale], {"fake": True})


def test_picks_the_fastest_verified_and_refuses_one_over_budget(builds):
    candidates = [
        Candidate("reference", "torch", "fp32", _eager(1.0)),
        Candidate("faster", "torch", "fp32", _eager(2.0)),  # same predictions, positive scale
        Candidate("fastest but wrong", "torch", "int8", _eager(-1.0)),
        Candidate("no gpu here", "tensorrt", "fp16", _eager(3.0)),
    ]
    times = {1.0: 4.0, 2.0: 1.0, -1.0: 0.5, 3.0: 0.1}
    report = search(candidates, builds, measure=_fake_times(times))
    by_name = {r.candidate.name: r for r in report.results}
    assert report.chosen is by_name["faster"] and by_name["faster"].speedup == 4.0
    assert by_name["fastest but wrong"].outcome is Outcome.FAILED
    assert "accuracy drop 100.00 points > budget 0.5" in by_name["fastest but wrong"].reason
    assert by_name["reference"].reason == "slower: p50 4.000 ms, 4.00x the chosen"
    assert by_name["no gpu here"].outcome is Outcome.SKIPPED
    assert "runtime 'tensorrt' is not available" in by_name["no gpu here"].reason
    saved = report.to_dict()
    assert saved["chosen"] == "faster" and saved["candidates"][1]["runtime_facts"] == {"fake": True}


def test_time_budget_leaves_the_rest_untried(builds):
    candidates = [
        Candidate("reference", "torch", "fp32", _eager(1.0)),
        Candidate("later", "torch", "fp32", _eager(2.0)),
    ]
    report = search(candidates, builds, time_budget_s=0.0, measure=_fake_times({1.0: 1.0}))
    assert [r.outcome for r in report.results] == [Outcome.CHOSEN, Outcome.NOT_TRIED]


def test_labels_decide_the_drop_when_the_data_has_them(builds):
    data = dict(builds.eval_data)
    predictions = (data["x"] @ Scaled(1.0).w.detach().numpy()).argmax(axis=1)
    data["labels"] = np.where(np.arange(40) < 30, predictions, (predictions + 1) % 3)
    builds.eval_data = data  # FP32 top-1 is 75% against these labels
    report = search(
        [Candidate("reference", "torch", "fp32", _eager(1.0))],
        builds,
        measure=_fake_times({1.0: 1.0}),
    )
    assert report.results[0].drop == pytest.approx(0.0)


def test_the_bench_layer_times_real_candidates(builds):
    config = BenchConfig(warmup=1, iters=3, min_time_s=None, threads=1)
    report = search([Candidate("eager", "torch", "fp32", _eager(1.0))], builds, config=config)
    (only,) = report.results
    assert only.outcome is Outcome.CHOSEN and only.p50_ms > 0 and only.speedup == 1.0


def test_default_candidates_cover_every_cpu_runtime():
    names = {c.runtime for c in default_candidates()}
    assert names == {"ort-cpu", "openvino", "openvino-bf16", "aoti", "executorch", "torch"}
    assert default_candidates()[0].name == "ort fp32"


def test_unknown_runtime_is_a_config_error(builds):
    candidates = [Candidate("typo", "ort-gpu", "fp32", _eager(1.0))]
    with pytest.raises(ConfigError, match="unknown runtime 'ort-gpu'"):
        search(candidates, builds, measure=_fake_times({1.0: 1.0}))


def test_tune_command_writes_the_report_and_names_the_release(tmp_path, capsys):
    from torchship.cli.main import main

    source = tmp_path / "tiny.py"
    source.write_text(
        "import torch\n\ndef tiny():\n    torch.manual_seed(0)\n    return torch.nn.Linear(4, 3)\n"
    )
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "data.npz", x=rng.standard_normal((16, 4)).astype(np.float32))
    out = tmp_path / "tuned"
    argv = [
        "tune", f"{source}:tiny", "--input", "x:2x4", "--dynamic-batch",
        "--calib", tmp_path / "data.npz", "--eval", tmp_path / "data.npz",
        "--time-budget", "0", "--min-time", "0.05", "-o", out,
    ]  # fmt: skip
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "fastest verified" in captured.out and "time budget spent" in captured.out
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["release"] == {
        "candidate": "ort fp32", "runtime": "ort-cpu", "artifact": "onnx/model.onnx",
    }  # fmt: skip
    report = json.loads((out / "tune_report.json").read_text())
    assert report["chosen"] == "ort fp32" and len(report["candidates"]) == 10
    bad = main([str(a) for a in [*argv[:-2], "--max-drop", "-1", "-o", tmp_path / "bad"]])
    assert bad == 2 and not (tmp_path / "bad").exists()
