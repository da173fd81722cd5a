"""The deployment search: it picks the fastest verified candidate and says why others lost."""

from __future__ import annotations

import json
from collections.abc import Callable

import numpy as np
import pytest
import torch

from torchship.artifact import Artifact, Format
from torchship.calibration.budget import BudgetOptions
from torchship.cli.tables import tune_table
from torchship.errors import CalibrationError, ConfigError
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
    # class scores by name: the search reads top-1 agreement (or top-1 with labels)
    model = LoadedModel(Scaled(1.0).eval(), (SPEC,), ("logits",), source="scaled")
    rng = np.random.default_rng(0)
    data = {"x": rng.standard_normal((40, 4)).astype(np.float32)}
    return Builds(model, tmp_path, calib=data, eval_data=data, max_drop=0.5, threads=1)


def _eager(scale: float) -> Callable:
    module = Scaled(scale).eval()
    return lambda builds: Artifact.eager(module, inputs=(SPEC,), outputs=("logits",))


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


def test_a_candidate_that_fails_to_build_is_skipped_and_leaves_no_folder(builds):
    def refuse(folder):
        (folder / "half-written.pte").write_bytes(b"x")
        raise CalibrationError("pt2e: the quantizer cannot annotate this model")

    candidates = [
        Candidate("reference", "torch", "fp32", _eager(1.0)),
        Candidate("refused", "torch", "int8", lambda b: b.once("int8-refused", refuse)),
    ]
    report = search(candidates, builds, measure=_fake_times({1.0: 1.0}))
    assert report.results[1].outcome is Outcome.SKIPPED
    assert "cannot annotate" in report.results[1].reason
    assert not (builds.folder / "int8-refused").exists()


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


# --- models whose output is not class scores: the measure follows the output -------------------

EMBED_SPEC = InputSpec(name="x", dtype="float32", shape=(2, 8), dynamic={0: "batch"})


class Embedder(torch.nn.Module):
    """A 32-d embedding with a large common part, so its arg-max is a near tie:

    - "reference": 10 + 0.1 x @ w;
    - "shifted": plus 0.1 x @ v: cosine with the reference 0.9995, yet the arg-max of most
      samples moves (the old top-1 rule refused it);
    - "damaged": every coordinate but the arg-max pushed down by |x @ v|: the arg-max never
      moves (the old rule passed it), cosine 0.96.
    """

    def __init__(self, kind: str = "reference") -> None:
        super().__init__()
        torch.manual_seed(0)
        self.w, self.v = (
            torch.nn.Parameter(torch.randn(8, 32)),
            torch.nn.Parameter(torch.randn(8, 32)),
        )
        self.kind = kind

    def forward(self, x):
        out = 10 + 0.1 * (x @ self.w)
        if self.kind == "shifted":
            return out + 0.1 * (x @ self.v)
        if self.kind == "damaged":
            top = torch.nn.functional.one_hot(out.argmax(dim=1), 32).bool()
            return out - (x @ self.v).abs().masked_fill(top, 0.0)
        return out


_P50 = {"reference": 4.0, "shifted": 1.0, "damaged": 0.5}


def _embedder(kind: str) -> Candidate:
    module = Embedder(kind).eval()

    def make(_builds) -> Artifact:
        return Artifact.eager(module, inputs=(EMBED_SPEC,), outputs=("embedding",))

    return Candidate(kind, "torch", "fp32" if kind == "reference" else "int8", make)


def _by_kind(runtime, artifact):
    return _P50[artifact.module.kind], {}


def _embedding_builds(tmp_path, *, output="embedding", task=None, labels=False, **budget):
    model = LoadedModel(Embedder().eval(), (EMBED_SPEC,), (output,), source="embedder", task=task)
    data = {"x": np.random.default_rng(0).standard_normal((40, 8)).astype(np.float32)}
    if labels:
        data["labels"] = model.run(data)[output].argmax(axis=1)
    return Builds(
        model, tmp_path, calib=data, eval_data=data, threads=1, budget=BudgetOptions(**budget)
    )


def test_the_facts_of_the_fakes_defeat_top1():
    x = torch.from_numpy(np.random.default_rng(0).standard_normal((40, 8)).astype(np.float32))
    ref, shifted, damaged = (Embedder(k)(x).detach() for k in ("reference", "shifted", "damaged"))
    cosine = torch.nn.functional.cosine_similarity
    assert cosine(ref, shifted).mean() > 0.999
    assert (ref.argmax(1) == shifted.argmax(1)).float().mean() < 0.5
    assert cosine(ref, damaged).mean() < 0.97 and (ref.argmax(1) == damaged.argmax(1)).all()


def test_an_embedding_is_held_to_cosine_not_argmax(tmp_path):
    builds = _embedding_builds(tmp_path)
    report = search([_embedder(k) for k in _P50], builds, measure=_by_kind)
    by_name = {r.candidate.name: r for r in report.results}
    assert report.measure.metric.value == "cosine" and "named like an embedding" in report.chosen_by
    shifted, damaged = by_name["shifted"], by_name["damaged"]
    assert report.chosen is shifted  # its arg-max moved for most samples; its cosine did not
    assert shifted.value > 0.999 and shifted.drop is None
    assert shifted.reason == f"fastest verified: p50 1.000 ms, mean cosine {shifted.value:.4f}"
    assert damaged.outcome is Outcome.FAILED  # its arg-max never moved
    assert damaged.reason == f"mean cosine {damaged.value:.4f} < budget 0.99"
    saved = report.to_dict()
    assert saved["metric"] == "cosine" and saved["budget"] == 0.99
    assert saved["candidates"][1]["metric"] == "cosine"
    assert saved["candidates"][1]["accuracy"]["agreement"] < 0.5


def test_the_recorded_task_decides_before_the_output_name(tmp_path):
    builds = _embedding_builds(tmp_path, output="logits", task="feature-extraction",
                               min_cosine=0.9995)  # fmt: skip
    report = search([_embedder(k) for k in _P50], builds, measure=_by_kind)
    assert "task 'feature-extraction'" in report.chosen_by
    shifted = next(r for r in report.results if r.candidate.name == "shifted")
    assert shifted.outcome is Outcome.FAILED and "< budget 0.9995" in shifted.reason
    assert "cosine" in str(tune_table(report).columns[5].header)


def test_metric_top1_still_reads_the_labels(tmp_path):
    builds = _embedding_builds(tmp_path, labels=True, metric="top1", max_drop=0.5)
    report = search([_embedder(k) for k in _P50], builds, measure=_by_kind)
    by_name = {r.candidate.name: r for r in report.results}
    assert report.chosen is by_name["damaged"] and by_name["damaged"].drop == pytest.approx(0.0)
    assert "accuracy drop" in by_name["shifted"].reason and report.chosen_by == "--metric"
    assert by_name["shifted"].drop == by_name["shifted"].value > 50


def test_metric_top1_without_labels_and_an_unread_flag(tmp_path):
    with pytest.raises(ConfigError, match="--metric top1 needs labels"):
        search([_embedder("reference")], _embedding_builds(tmp_path, metric="top1"))
    builds = _embedding_builds(tmp_path, max_drop=2.0)
    report = search([_embedder("reference")], builds, measure=_by_kind)
    assert report.warnings == (
        "--max-drop is not read: the measure is cosine (output 'embedding' is named like an "
        "embedding)",
    )


def test_a_linear_head_is_class_scores_and_sqnr_reads_its_own_budget(tmp_path):
    head = LoadedModel(torch.nn.Linear(8, 5).eval(), (EMBED_SPEC,), ("output",), source="head")
    data = {"x": np.zeros((4, 8), np.float32)}
    builds = Builds(head, tmp_path, calib=data, eval_data=data, threads=1)
    check = builds.check()
    assert check.choice.metric.value == "agreement" and "Gemm head" in check.choice.reason
    assert check.budget.limit == 0.5  # the search's default drop
    sqnr = Builds(head, tmp_path, calib=data, eval_data=data, threads=1,
                  budget=BudgetOptions(metric="sqnr", min_sqnr=30))  # fmt: skip
    assert sqnr.check().budget.limit == 30 and sqnr.max_drop == 0.5


def test_the_ort_int8_candidate_quantizes_under_the_search_budget(tmp_path, monkeypatch):
    seen = {}

    def fake_quantize(source, out, *, calib, eval_data, options):
        seen["options"] = options
        raise ConfigError("stop here")

    monkeypatch.setattr("torchship.tune.quantize", fake_quantize)
    builds = _embedding_builds(tmp_path, min_cosine=0.995)
    builds.reuse("onnx", Artifact(tmp_path / "model.onnx", Format.ONNX, (EMBED_SPEC,), ()))
    with pytest.raises(ConfigError, match="stop here"):
        builds.ort_int8()
    options = seen["options"]
    assert options.metric == "cosine" and options.min_cosine == 0.995 and options.max_drop is None


def _write_embedder(tmp_path):
    source = tmp_path / "embedder.py"
    source.write_text(
        "import torch\n\n\nclass Embed(torch.nn.Module):\n"
        "    def __init__(self):\n        super().__init__()\n"
        "        torch.manual_seed(0)\n        self.proj = torch.nn.Linear(4, 16)\n\n"
        "    def forward(self, x):\n"
        "        return torch.nn.functional.normalize(self.proj(x), dim=-1)\n\n\n"
        "def embed():\n    return Embed()\n"
    )
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "data.npz", x=rng.standard_normal((16, 4)).astype(np.float32))
    return source


def test_tune_command_on_an_embedding_prints_its_measure(tmp_path, capsys):
    from torchship.cli.main import main

    source = _write_embedder(tmp_path)
    argv = [
        "tune", f"{source}:embed", "--input", "x:2x4", "--dynamic-batch",
        "--calib", tmp_path / "data.npz", "--eval", tmp_path / "data.npz",
        "--time-budget", "0", "--min-time", "0.05",
    ]  # fmt: skip
    code = main([str(a) for a in [*argv, "-o", tmp_path / "tuned"]])
    out = " ".join(capsys.readouterr().out.split())
    assert code == 0, out
    assert "cosine at least 0.99 (--min-cosine)" in out and "mean cosine 1.0000" in out
    report = json.loads((tmp_path / "tuned" / "tune_report.json").read_text())
    assert report["metric"] == "cosine" and report["candidates"][0]["outcome"] == "chosen"
    # 200 dB is the cap of SQNR: nothing can verify
    none = main([str(a) for a in [*argv, "--metric", "sqnr", "--min-sqnr", "250", "-o",
                                  tmp_path / "none"]])  # fmt: skip
    out = " ".join(capsys.readouterr().out.split())
    assert none == 1 and "< budget 250" in out
    bad = main([str(a) for a in [*argv, "--min-cosine", "2", "-o", tmp_path / "bad"]])
    assert bad == 2 and not (tmp_path / "bad").exists()
    assert "--min-cosine 2.0: must be -1..1" in capsys.readouterr().err


@pytest.mark.slow
def test_tune_on_a_transformer_holds_its_embedding_to_cosine(tmp_path):
    """End to end on an HF architecture built from its config: the search reads cosine (the
    task says embeddings), builds ORT INT8 under that budget and ships a verified candidate."""
    from torchship.models.hf_zoo import HF_ZOO
    from torchship.sources import load_model
    from torchship.specs import random_feeds
    from torchship.tune import tune_model

    bert = next(e for e in HF_ZOO if e.name == "BERT")
    model = load_model(bert.source, config=bert.config_json, task="feature-extraction")
    np.savez(tmp_path / "calib.npz", **random_feeds(model.inputs, seed=0, batch=32))
    np.savez(tmp_path / "eval.npz", **random_feeds(model.inputs, seed=1, batch=32))
    wanted = {"ort fp32", "ort int8", "openvino int8"}
    report = tune_model(
        model, tmp_path / "tuned", calib=tmp_path / "calib.npz", eval_data=tmp_path / "eval.npz",
        candidates=[c for c in default_candidates() if c.name in wanted], min_time_s=0.05,
        threads=1,
    )  # fmt: skip
    saved = json.loads((tmp_path / "tuned" / "tune_report.json").read_text())
    assert saved["metric"] == "cosine"
    by_name = {r.candidate.name: r for r in report.results}
    int8 = by_name["ort int8"]
    assert int8.artifact.precision.value == "int8" and int8.metric == "cosine"
    assert 0.5 < int8.value <= 1.0  # a mean cosine, not a drop in points
    assert (int8.outcome is Outcome.FAILED) == (int8.value < 0.99)
    assert report.chosen is not None and report.chosen.outcome is Outcome.CHOSEN
    manifest = json.loads((tmp_path / "tuned" / "manifest.json").read_text())
    assert manifest["release"]
    assert not any(p.is_dir() and not any(p.iterdir()) for p in (tmp_path / "tuned").rglob("*"))
