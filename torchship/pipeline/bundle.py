"""Run a `pipeline.toml` and write the release bundle `<output>/<name>-<version>/`.

The bundle holds every artifact, the reference I/O, `bench.json`, `report.json`, `report.md`,
`junit.xml`, `latency.png` (when matplotlib is installed) and `manifest.json` with
`"status": "passed" | "failed"`. It is built in a hidden staging folder and renamed into place
only when complete, so an interrupted run leaves no bundle that looks finished. A failed gate
still writes the bundle (marked failed); the caller turns that into exit 1.
"""

from __future__ import annotations

import logging
import xml.etree.ElementTree as ET
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from torchship.artifact import Artifact, Format, Precision
from torchship.errors import CalibrationError, CheckFailedError, ConfigError
from torchship.files import (
    atomic_dir,
    atomic_write_json,
    atomic_write_text,
    check_replaceable_dir,
)
from torchship.pipeline.registry import step_function
from torchship.pipeline.schema import PipelineConfig

__all__ = ["GateResult", "PipelineResult", "run_pipeline", "require_pipeline"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class GateResult:
    name: str
    passed: bool
    detail: str

    def to_dict(self) -> dict:
        return {"name": self.name, "passed": self.passed, "detail": self.detail}


@dataclass(frozen=True)
class PipelineResult:
    bundle: Path
    gates: tuple[GateResult, ...]
    rows: tuple[dict, ...]

    @property
    def passed(self) -> bool:
        return all(g.passed for g in self.gates)

    def to_dict(self) -> dict:
        return {
            "bundle": str(self.bundle),
            "status": "passed" if self.passed else "failed",
            "gates": [g.to_dict() for g in self.gates],
            "rows": list(self.rows),
        }


def require_pipeline(result: PipelineResult) -> PipelineResult:
    """Raise CheckFailedError naming the first failed gate (the bundle is already written)."""
    failed = [g for g in result.gates if not g.passed]
    if failed:
        raise CheckFailedError(
            f"gate {failed[0].name} failed: {failed[0].detail}; bundle {result.bundle} is "
            "marked failed"
        )
    return result


def run_pipeline(
    config: PipelineConfig,
    *,
    command: Sequence[str] | None = None,
    progress: Callable[[str], None] | None = None,
) -> PipelineResult:
    """Every step of `config`, then the gates; writes the bundle atomically and returns it."""
    from torchship.exporter import ExportOptions, export_model, require_parity
    from torchship.exporter.reference import save_own_references, save_references

    step = progress or (lambda message: None)
    check_replaceable_dir(config.bundle_dir)  # before any work, as a missing baseline is
    baseline = _load_baseline(config)
    original = _load(config)
    model, pruning = _prune(config, original, step) if config.prune else (original, None)
    with atomic_dir(config.bundle_dir) as stage:
        step("exporting " + ", ".join(config.export.formats))
        dynamo = False if config.export.legacy_onnx else None
        options = ExportOptions(opset=config.export.opset, dynamo=dynamo)
        artifacts = export_model(model, stage, formats=config.export.formats, options=options)
        parity = {}
        for artifact in artifacts:
            step(f"checking {artifact.path.name} against eager PyTorch")
            parity[artifact.path.name] = require_parity(model, artifact).to_dict()
        save_references(model, stage)
        quantized = _quantized(config, artifacts, stage, step)
        engines = _engines(config, artifacts, quantized, stage, step)
        save_own_references(quantized + engines, stage)
        artifacts += quantized + engines
        # the unpruned eager model is the reference row: pruning's cost shows in drop and speedup
        rows, document = _measure(config, original, artifacts, stage, step)
        gates = _gates(config, rows, document, baseline)
        result = PipelineResult(config.bundle_dir, tuple(gates), tuple(rows))
        _write_reports(stage, config, result, document)
        _write_manifest(stage, config, model, artifacts, result, parity, command, pruning)
    log.info("bundle %s: %s", config.bundle_dir, "passed" if result.passed else "failed")
    return result


def _load(config: PipelineConfig):
    from torchship.sources import load_model
    from torchship.specs import apply_dynamic_flags, parse_input_flag

    specs = [parse_input_flag(text) for text in config.model.inputs]
    specs = apply_dynamic_flags(
        specs, dynamic_batch=config.model.dynamic_batch, dynamic=list(config.model.dynamic)
    )
    weights = config.resolve(config.model.weights)
    source = config.model.source
    if ":" not in source and source != "demo":
        source = str(config.resolve(source))
    return load_model(source, inputs=specs or None, weights=weights)


def _prune(config: PipelineConfig, model, step):
    """(pruned model, pruning report); distilled from `model` when [prune] names train data."""
    from torchship.data import load_arrays
    from torchship.exporter.pruning.channels import PruneConfig
    from torchship.exporter.pruning.distill import DistillConfig

    section = config.prune
    prune = step_function("prune")
    train_path = config.resolve(section.train)
    train = (
        load_arrays(train_path, inputs=model.inputs, what="[prune] train") if train_path else None
    )
    distill = train is not None and section.epochs > 0
    recovery = DistillConfig(epochs=section.epochs, seed=0) if distill else None
    outcome = prune(
        model, config=PruneConfig(ratio=section.ratio, importance=section.importance),
        train=train, recovery=recovery, progress=step,
    )  # fmt: skip
    return outcome.model, outcome.to_dict()


def _engines(config: PipelineConfig, artifacts, quantized, stage: Path, step) -> list[Artifact]:
    """TensorRT engines when TensorRT and a GPU are here; [] (logged) otherwise."""
    if config.engines is None:
        return []
    ship_engines = step_function("engines")
    onnx = _onnx_of(artifacts, step="engines")
    precisions = [Precision(p) for p in config.engines.precisions]
    int8_onnx = next((a for a in quantized if a.path.parent.name == "int8-tensorrt"), None)
    if Precision.INT8 in precisions and int8_onnx is None:
        raise ConfigError('[engines] int8 builds from [quantize] presets = ["tensorrt"]; add it')
    step("building TensorRT engines: " + ", ".join(p.value for p in precisions))
    return ship_engines(
        onnx, stage / "engines", precisions=[p for p in precisions if p is not Precision.INT8],
        int8_onnx=int8_onnx if Precision.INT8 in precisions else None,
    )  # fmt: skip


def _onnx_of(artifacts: Sequence[Artifact], *, step: str) -> Artifact:
    onnx = next((a for a in artifacts if a.format is Format.ONNX), None)
    if onnx is None:
        raise ConfigError(f'[{step}] needs "onnx" in [export] formats')
    return onnx


def _quantized(config: PipelineConfig, artifacts, stage: Path, step) -> list[Artifact]:
    if config.quantize is None:
        return []
    from torchship.calibration.quantize import QuantizeOptions

    quantize = step_function("quantize")
    onnx = _onnx_of(artifacts, step="quantize")
    out = []
    for preset in config.quantize.presets:
        step(f"quantizing {onnx.path.name} with preset {preset}")
        options = QuantizeOptions(
            target=preset, method=config.quantize.method, max_drop=config.quantize.max_drop,
            bench=False,
        )  # fmt: skip
        calib = config.resolve(config.quantize.calib)
        result = quantize(onnx, stage / f"int8-{preset}", calib=calib, options=options)
        out.append(result.artifact)
    return out


def _measure(config: PipelineConfig, model, artifacts, stage: Path, step):
    from torchship.runtimes import BenchConfig, bench_document, bench_runner, default_runtime_for
    from torchship.runtimes.evaluate import evaluate_top1

    bench = config.bench
    bench_config = BenchConfig(
        batches=bench.batches, min_time_s=bench.min_time_s, warmup=bench.warmup,
        threads=bench.threads,
    )  # fmt: skip
    data = _eval_data(config, model)
    eager = model.eager()
    rows, results = [], []
    for artifact in [eager, *artifacts]:
        runtimes = [r for r in bench.runtimes if _runs(r, artifact)] or [
            default_runtime_for(artifact.format)
        ]
        for runtime in runtimes:
            label = "eager" if artifact.format is Format.EAGER else _rel(artifact, stage)
            step(f"accuracy and latency of {label} on {runtime}")
            accuracy = evaluate_top1(runtime, artifact, *data) if data else None
            for batch in bench.batches:
                result = bench_runner(runtime, artifact, config=bench_config, batch=batch)
                results.append(result)
                rows.append(_row(label, artifact, runtime, batch, accuracy, result))
    _add_speedups(rows)
    document = bench_document(results)
    for entry in document["results"]:
        if entry["artifact"] != "<eager>":
            entry["artifact"] = Path(entry["artifact"]).relative_to(stage).as_posix()
    atomic_write_json(stage / "bench.json", document)
    return rows, document


def _runs(runtime: str, artifact: Artifact) -> bool:
    from torchship.runtimes.base import get_runner

    return artifact.format in get_runner(runtime).formats


def _rel(artifact: Artifact, stage: Path) -> str:
    return _rel_path(artifact.path, stage)


def _rel_path(path: Path, stage: Path) -> str:
    return path.relative_to(stage).as_posix()


def _row(label, artifact, runtime, batch, accuracy, result) -> dict:
    return {
        "artifact": label,
        "format": artifact.format.value,
        "runtime": runtime,
        "precision": artifact.precision.value,
        "batch": batch,
        "accuracy": accuracy,
        "p50_ms": result.latency_ms["p50"],
        "p90_ms": result.latency_ms["p90"],
    }


def _add_speedups(rows: list[dict]) -> None:
    eager = {r["batch"]: r["p50_ms"] for r in rows if r["format"] == Format.EAGER.value}
    for row in rows:
        row["speedup_vs_eager"] = round(eager[row["batch"]] / row["p50_ms"], 4)


def _eval_data(config: PipelineConfig, model) -> tuple[dict, np.ndarray] | None:
    if config.model.eval is None and config.model.source == "demo":
        from torchship.models import demo_dataset

        images, labels = demo_dataset("test")
        return {model.inputs[0].name: images}, labels
    path = config.resolve(config.model.eval)
    if path is None:
        return None
    from torchship.data import LABELS_KEY, load_arrays

    arrays = load_arrays(path, inputs=model.inputs, what="[model] eval")
    if LABELS_KEY not in arrays:
        raise CalibrationError(f"[model] eval: {path} has no `{LABELS_KEY}` array")
    return {s.name: arrays[s.name] for s in model.inputs}, arrays[LABELS_KEY]


def _gates(
    config: PipelineConfig, rows: list[dict], document: dict, baseline: dict | None
) -> list[GateResult]:
    gates = config.gates
    out = []
    if gates.max_accuracy_drop is not None:
        out.append(_accuracy_gate(rows, gates.max_accuracy_drop))
    shipped = [r for r in rows if r["format"] != Format.EAGER.value] or rows
    if gates.max_p90_ms is not None:
        worst = max(shipped, key=lambda r: r["p90_ms"])
        detail = (
            f"worst p90 {worst['p90_ms']:.3f} ms ({worst['artifact']} on {worst['runtime']}, "
            f"batch {worst['batch']}), budget {gates.max_p90_ms:g} ms"
        )
        out.append(GateResult("max_p90_ms", worst["p90_ms"] <= gates.max_p90_ms, detail))
    if gates.min_speedup is not None:
        first = config.bench.batches[0]
        best = max((r for r in shipped if r["batch"] == first), key=lambda r: r["speedup_vs_eager"])
        detail = (
            f"best speedup {best['speedup_vs_eager']:.2f}x at batch {first} ({best['artifact']} "
            f"on {best['runtime']}), needed {gates.min_speedup:g}x"
        )
        out.append(GateResult("min_speedup", best["speedup_vs_eager"] >= gates.min_speedup, detail))
    if baseline is not None:
        out.append(_baseline_gate(config, document, baseline))
    return out


def _accuracy_gate(rows: list[dict], max_drop: float) -> GateResult:
    reference = next((r["accuracy"] for r in rows if r["format"] == "eager"), None)
    scored = [r for r in rows if r["format"] != "eager" and r["accuracy"] is not None]
    if reference is None or not scored:
        return GateResult("max_accuracy_drop", False, "no eval data to measure accuracy with")
    worst = min(scored, key=lambda r: r["accuracy"])
    drop = (reference - worst["accuracy"]) * 100
    detail = f"largest drop {drop:.2f} points ({worst['artifact']}), budget {max_drop:g}"
    return GateResult("max_accuracy_drop", drop <= max_drop, detail)


def _load_baseline(config: PipelineConfig) -> dict | None:
    from torchship.regression.baselines import load_baseline

    gates = config.gates
    if gates.baseline is None:
        return None
    return load_baseline(gates.baseline, root=config.resolve(gates.baseline_dir))


def _baseline_gate(config: PipelineConfig, document: dict, baseline: dict) -> GateResult:
    from torchship.regression.documents import compare_documents
    from torchship.regression.stats import CompareConfig

    gates = config.gates
    result = compare_documents(
        baseline, document, config=CompareConfig(threshold_pct=gates.threshold_pct)
    )
    slower = ", ".join(r.label for r in result.regressions)
    unsure = ", ".join(r.label for r in result.rows if r.verdict == "inconclusive")
    if slower:
        return GateResult("baseline", False, f"slower than baseline {gates.baseline!r}: {slower}")
    if unsure:  # too few samples to tell: not a pass
        detail = f"inconclusive vs baseline {gates.baseline!r} ({unsure}): raise [bench] min_time_s"
        return GateResult("baseline", False, detail)
    return GateResult("baseline", result.passed, "no regression")


def _write_reports(stage: Path, config: PipelineConfig, result: PipelineResult, document) -> None:
    atomic_write_json(stage / "report.json", {**result.to_dict(), "bundle": config.bundle_dir.name})
    atomic_write_text(stage / "report.md", _markdown(config, result))
    atomic_write_text(stage / "junit.xml", _junit(config, result))
    _plot(stage / "latency.png", result.rows)


def _markdown(config: PipelineConfig, result: PipelineResult) -> str:
    status = "PASSED" if result.passed else "FAILED"
    lines = [f"# {config.name} {config.version}: {status}", "", "## Gates", ""]
    lines += [f"- {'pass' if g.passed else 'FAIL'} `{g.name}`: {g.detail}" for g in result.gates]
    lines += ["", "## Artifacts", "", "| artifact | runtime | precision | batch | accuracy | "
              "p50 ms | p90 ms | speedup |", "|---|---|---|---:|---:|---:|---:|---:|"]  # fmt: skip
    for r in result.rows:
        accuracy = "-" if r["accuracy"] is None else f"{100 * r['accuracy']:.2f}%"
        lines.append(
            f"| {r['artifact']} | {r['runtime']} | {r['precision']} | {r['batch']} | {accuracy} "
            f"| {r['p50_ms']:.3f} | {r['p90_ms']:.3f} | {r['speedup_vs_eager']:.2f}x |"
        )
    return "\n".join(lines) + "\n"


def _junit(config: PipelineConfig, result: PipelineResult) -> str:
    suite = f"torchship.pipeline.demo.{config.name}"
    failed = [g for g in result.gates if not g.passed]
    root = ET.Element(
        "testsuite", name=suite, tests=str(len(result.gates)), failures=str(len(failed))
    )
    for gate in result.gates:
        case = ET.SubElement(root, "testcase", classname=suite, name=gate.name)
        if not gate.passed:
            ET.SubElement(case, "failure", message=gate.detail).text = gate.detail
    return ET.tostring(root, encoding="unicode", xml_declaration=True) + "\n"


def _plot(path: Path, rows: Sequence[dict]) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log.info("matplotlib is not installed; no latency plot in the bundle")
        return
    figure, axes = plt.subplots(figsize=(7, 0.4 * len(rows) + 1.5))
    labels = [f"{r['artifact']} / {r['runtime']} / b{r['batch']}" for r in rows]
    axes.barh(labels, [r["p50_ms"] for r in rows])
    axes.set_xlabel("p50 latency (ms)")
    figure.tight_layout()
    figure.savefig(path, metadata={"Software": None})
    plt.close(figure)


def _write_manifest(stage, config, model, artifacts, result, parity, command, pruning) -> None:
    from torchship.manifest import build_manifest, write_manifest

    manifest = build_manifest(
        stage,
        model=model,
        artifacts=artifacts,
        command=command,
        metrics={"parity": parity, "rows": list(result.rows)},
        gates={g.name: g.to_dict() for g in result.gates},
        extra={
            "status": "passed" if result.passed else "failed",
            "pipeline": config.to_dict(),
            "pruning": pruning,
        },
    )
    write_manifest(stage, manifest)
