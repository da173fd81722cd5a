"""`torchship ship pipeline.toml`: the bundle, its atomicity, determinism and failed gates."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from dataclasses import replace

import pytest

from torchship.cli.main import main
from torchship.errors import ConfigError
from torchship.files import sha256_file
from torchship.pipeline import BundleRow, load_pipeline, run_pipeline
from torchship.pipeline.steps import GatesStep, MeasureStep, ReportStep
from torchship.pipeline.steps.gates import baseline_gate

BUNDLE_FILES = {
    "model.onnx", "model.ts", "reference_inputs.json", "reference_outputs.json", "bench.json",
    "report.json", "report.md", "junit.xml", "manifest.json",
}  # fmt: skip


def test_latency_plot_is_a_png_when_matplotlib_is_installed(demo_bundle):
    pytest.importorskip("matplotlib")
    plot = demo_bundle / "latency.png"
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    manifest = json.loads((demo_bundle / "manifest.json").read_text())
    assert "latency.png" in {f["path"] for f in manifest["files"]}


def test_bundle_holds_everything(demo_bundle):
    assert demo_bundle.name == "demo-1.0"
    assert BUNDLE_FILES <= {p.name for p in demo_bundle.iterdir()}
    manifest = json.loads((demo_bundle / "manifest.json").read_text())
    assert manifest["status"] == "passed"
    assert manifest["gates"]["max_accuracy_drop"]["passed"] is True
    assert {a["path"] for a in manifest["artifacts"]} == {"model.onnx", "model.ts"}
    assert manifest["pipeline"]["bench"]["batches"] == [8]
    bench = json.loads((demo_bundle / "bench.json").read_text())
    assert {r["artifact"] for r in bench["results"]} == {"<eager>", "model.onnx", "model.ts"}
    assert "# demo 1.0: PASSED" in (demo_bundle / "report.md").read_text()
    assert ET.parse(demo_bundle / "junit.xml").getroot().get("failures") == "0"
    assert not [p for p in demo_bundle.parent.iterdir() if p.name.startswith(".")]


def test_failed_gate_writes_a_bundle_marked_failed(demo_bundle, tmp_path, capsys, pipeline_file):
    from torchship.regression.baselines import save_baseline
    from torchship.runtimes import load_bench_document

    save_baseline(load_bench_document(demo_bundle / "bench.json"), "main", root=tmp_path / "b")
    gates = 'max_p90_ms = 0.000001\nbaseline = "main"\nbaseline_dir = "b"\nthreshold_pct = 900'
    path = pipeline_file(tmp_path, extra_gates=gates)
    assert main(["ship", str(path)]) == 1
    captured = capsys.readouterr()
    assert "gate max_p90_ms failed: worst p90" in captured.err
    bundle = tmp_path / "dist" / "demo-1.0"
    assert json.loads((bundle / "manifest.json").read_text())["status"] == "failed"
    assert "FAILED" in (bundle / "report.md").read_text()
    assert ET.parse(bundle / "junit.xml").getroot().get("failures") == "1"
    gates = json.loads((bundle / "report.json").read_text())["gates"]
    assert {g["name"]: g["passed"] for g in gates} == {
        "max_accuracy_drop": True,
        "max_p90_ms": False,
        "baseline": True,
    }
    # determinism: the same model and export settings give a byte-identical ONNX file
    assert sha256_file(bundle / "model.onnx") == sha256_file(demo_bundle / "model.onnx")


@pytest.mark.slow
def test_dynamo_export_is_deterministic_too(tmp_path, pipeline_file):
    digests = {
        sha256_file(
            run_pipeline(load_pipeline(pipeline_file(tmp_path / run, legacy=False))).bundle
            / "model.onnx"
        )
        for run in ("first", "second")
    }
    assert len(digests) == 1


def test_missing_baseline_stops_before_a_bundle(tmp_path, pipeline_file):
    path = pipeline_file(tmp_path, extra_gates='baseline = "nope"\nbaseline_dir = "b"')
    with pytest.raises(ConfigError, match="no baseline named 'nope'"):
        run_pipeline(load_pipeline(path))
    assert not (tmp_path / "dist" / "demo-1.0").exists()


@pytest.mark.parametrize(
    ("step", "interrupt"), [(ReportStep, KeyboardInterrupt), (MeasureStep, RuntimeError)]
)
def test_interrupted_ship_leaves_no_complete_looking_bundle(
    tmp_path, pipeline_file, monkeypatch, step, interrupt
):
    path = pipeline_file(tmp_path)

    def crash(*args, **kwargs):
        raise interrupt("simulated crash")

    monkeypatch.setattr(step, "run", crash)
    with pytest.raises(interrupt, match="simulated crash"):
        run_pipeline(load_pipeline(path))
    dist = tmp_path / "dist"
    assert not (dist / "demo-1.0").exists()
    assert list(dist.iterdir()) == []  # the staging folder is gone too


def test_interrupted_rerun_keeps_the_previous_bundle(demo_bundle, tmp_path, monkeypatch):
    import shutil

    config = load_pipeline(demo_bundle.parent.parent / "pipeline.toml")
    before = sha256_file(demo_bundle / "manifest.json")
    snapshot = tmp_path / "snapshot"
    shutil.copytree(demo_bundle, snapshot)
    monkeypatch.setattr(MeasureStep, "run", _raise_interrupt)
    with pytest.raises(KeyboardInterrupt):
        run_pipeline(config)
    assert sha256_file(demo_bundle / "manifest.json") == before
    assert sorted(p.name for p in demo_bundle.iterdir()) == sorted(
        p.name for p in snapshot.iterdir()
    )


def _raise_interrupt(*args, **kwargs):
    raise KeyboardInterrupt


@pytest.mark.slow
def test_pruned_distilled_pipeline_ships_smaller_weights(tmp_path, pipeline_file):
    """[prune] with train data distills; the eager row stays the unpruned model; [engines]
    without TensorRT is skipped, not failed."""
    import numpy as np
    import onnx

    from torchship.models import demo_dataset

    images, labels = demo_dataset("train")
    np.savez(tmp_path / "train.npz", image=images[:512], labels=labels[:512])
    extra = '\n[prune]\nratio = 0.5\ntrain = "train.npz"\nepochs = 1\n\n[engines]\n'
    extra += 'precisions = ["fp16"]\n'
    path = pipeline_file(tmp_path)
    path.write_text(path.read_text().replace("\n[bench]", extra + "\n[bench]"))
    result = run_pipeline(load_pipeline(path))
    manifest = json.loads((result.bundle / "manifest.json").read_text())
    pruning = manifest["pruning"]
    assert pruning["pruning"]["params"]["after"] < pruning["pruning"]["params"]["before"]
    assert pruning["training"]["epochs"] == 1
    weights = onnx.load(result.bundle / "model.onnx").graph.initializer
    # the exported graph is physically smaller: its weights add up to the pruned count
    assert sum(int(np.prod(w.dims)) for w in weights) <= pruning["pruning"]["params"]["after"]
    eager = next(r for r in result.rows if r.format == "eager")
    assert eager.accuracy > 0.99  # the unpruned reference
    assert not (result.bundle / "engines").exists()
    assert main(["verify", str(result.bundle)]) == 0


def test_engines_int8_needs_the_tensorrt_preset(tmp_path, pipeline_file):
    extra = '\n[engines]\nprecisions = ["int8"]\n'
    path = pipeline_file(tmp_path)
    path.write_text(path.read_text().replace("\n[bench]", extra + "\n[bench]"))
    with pytest.raises(ConfigError, match='presets = \\["tensorrt"\\]'):
        run_pipeline(load_pipeline(path))
    assert not (tmp_path / "dist" / "demo-1.0").exists()


def _row(artifact, fmt, batch, p50, p90, speedup):
    return BundleRow(
        artifact=artifact, format=fmt, runtime="x", precision="fp32", batch=batch,
        accuracy=None, p50_ms=p50, p90_ms=p90, speedup_vs_eager=speedup,
    )  # fmt: skip


def test_latency_gates_judge_shipped_artifacts_not_eager(tmp_path, pipeline_file):
    extra = "max_p90_ms = 5.0\nmin_speedup = 1.2\n"
    config = load_pipeline(pipeline_file(tmp_path, extra_gates=extra))
    config = replace(config, bench=replace(config.bench, batches=(1, 8)))
    rows = [
        _row("eager", "eager", 1, 1.0, 1.2, 1.0),
        _row("eager", "eager", 8, 9.0, 9.5, 1.0),  # slow eager must not fail max_p90_ms
        _row("model.onnx", "onnx", 1, 1.1, 1.3, 0.91),
        _row("model.onnx", "onnx", 8, 4.0, 4.5, 2.25),  # fast at batch 8 only
    ]
    step = GatesStep(config.gates, first_batch=config.bench.batches[0])
    gates = {g.name: g for g in step.judge(rows, {}, None)}
    assert gates["max_p90_ms"].passed and "model.onnx" in gates["max_p90_ms"].detail
    # min_speedup is judged at the first batch, where ONNX is slower than eager
    assert not gates["min_speedup"].passed and "0.91x at batch 1" in gates["min_speedup"].detail


def test_inconclusive_baseline_comparison_fails_the_gate(tmp_path, pipeline_file):
    from torchship.runtimes import BenchDocument, BenchResult

    def document(samples):
        return BenchDocument(results=(BenchResult(
            artifact="model.onnx", runtime="ort-cpu", precision="fp32", batch=8,
            samples_ms=samples, sha256="0" * 64, latency_ms={},
        ),))  # fmt: skip

    config = load_pipeline(pipeline_file(tmp_path, extra_gates='baseline = "main"\n'))
    gate = baseline_gate(config.gates, document([1.0] * 5), document([3.0] * 5))
    assert not gate.passed and "inconclusive" in gate.detail


def test_fixed_batch_model_ships_with_an_eval_set_of_any_size(tmp_path, pipeline_file):
    """Eval data of 20 samples on a model fixed at batch 8: the last batch is padded."""
    import numpy as np

    from torchship.models import demo_dataset

    images, labels = demo_dataset("test")
    np.savez(tmp_path / "eval.npz", image=images[:20], labels=labels[:20])
    path = pipeline_file(tmp_path)
    text = path.read_text().replace(
        'source = "demo"', 'source = "demo"\ninputs = ["image:8x1x32x32"]\neval = "eval.npz"'
    )
    path.write_text(text)
    result = run_pipeline(load_pipeline(path))
    accuracies = {r.artifact: r.accuracy for r in result.rows}
    assert accuracies["model.onnx"] == accuracies["eager"] >= 0.95
    assert result.passed
