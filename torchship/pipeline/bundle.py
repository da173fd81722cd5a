"""Run a `pipeline.toml` and write the release bundle `<output>/<name>-<version>/`.

The bundle holds every artifact, the reference I/O, `bench.json`, `report.json`, `report.md`,
`junit.xml`, `latency.png` (when matplotlib is installed) and `manifest.json` with
`"status": "passed" | "failed"`. A failed gate still writes the bundle (marked failed); the
caller turns that into exit 1. `plan_for` turns the configuration into the steps run by
`torchship.pipeline.plan.run_plan`, the runner the demo uses too.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

from torchship.artifact import Format, Precision
from torchship.calibration.quantize import QuantizeOptions
from torchship.exporter import ExportOptions
from torchship.pipeline.plan import Plan, run_plan
from torchship.pipeline.results import PipelineResult
from torchship.pipeline.schema import PipelineConfig
from torchship.pipeline.step import CALIB, EVAL, FP32, REFERENCE, TRAIN, Step, artifact_role
from torchship.pipeline.steps import (
    BaselineRef,
    CandidatesStep,
    DataFile,
    DataPath,
    DataSource,
    DemoSplit,
    EnginesStep,
    ExportStep,
    GatesStep,
    LoadStep,
    MeasureStep,
    PruneStep,
    QuantizeJob,
    QuantizeStep,
    ReferencesStep,
    ReleaseStep,
    ReportKind,
    ReportStep,
    pipeline_result,
)
from torchship.pipeline.writers import REPORT_FILES
from torchship.runtimes import BenchConfig
from torchship.specs import apply_dynamic_flags, parse_input_flag

__all__ = ["plan_for", "run_pipeline"]

log = logging.getLogger(__name__)


def run_pipeline(
    config: PipelineConfig,
    *,
    command: Sequence[str] | None = None,
    progress: Callable[[str], None] | None = None,
) -> PipelineResult:
    """Every step of `config`, then the gates; writes the bundle atomically and returns it."""
    result = pipeline_result(run_plan(plan_for(config), command=command, progress=progress))
    log.info("bundle %s: %s", config.bundle_dir, "passed" if result.passed else "failed")
    return result


def plan_for(config: PipelineConfig) -> Plan:
    """The steps `config` asks for, in the order they run."""
    prepare: list[Step] = [_load(config)]
    if config.prune is not None:
        section = config.prune
        prune = PruneStep(ratio=section.ratio, importance=section.importance, epochs=section.epochs)
        prepare.append(prune)
    dynamo = False if config.export.legacy_onnx else None
    options = ExportOptions(opset=config.export.opset, dynamo=dynamo)
    build: list[Step] = [ExportStep(formats=config.export.formats, options=options)]
    if config.quantize is not None:
        build.append(_quantize(config))
    if config.tune is not None:
        tune = config.tune
        build.append(
            CandidatesStep(
                max_drop=tune.max_drop, time_budget_s=tune.time_budget_s,
                threads=config.bench.threads, variants=(FP32,),
            )
        )  # fmt: skip
    if config.engines is not None:
        build.append(_engines(config))
    name = f"{config.name} {config.version}"
    build += [
        ReferencesStep(),
        MeasureStep(config=_bench_config(config), runtimes=config.bench.runtimes),
        *([ReleaseStep(max_drop=config.tune.max_drop)] if config.tune is not None else []),
        GatesStep(config.gates, first_batch=config.bench.batches[0]),
        ReportStep(
            ReportKind.BUNDLE,
            title=name,
            suite=f"torchship.ship.{config.name}",
            files=REPORT_FILES,
            pipeline=config.to_dict(),
        ),
    ]
    return Plan(config.bundle_dir, tuple(prepare), tuple(build))


def _load(config: PipelineConfig) -> LoadStep:
    section = config.model
    specs = [parse_input_flag(text) for text in section.inputs]
    specs = apply_dynamic_flags(
        specs, dynamic_batch=section.dynamic_batch, dynamic=list(section.dynamic)
    )
    source = section.source
    if ":" not in source and source != "demo":
        source = str(config.resolve(source))
    elif source.startswith("hf:") and not source.endswith("Config"):  # hf:DIR, beside the file
        source = f"hf:{config.resolve(source.removeprefix('hf:'))}"
    gates = config.gates
    baseline = None
    if gates.baseline is not None:
        baseline = BaselineRef(gates.baseline, root=config.resolve(gates.baseline_dir))
    return LoadStep(
        source,
        weights=config.resolve(section.weights),
        inputs=tuple(specs),
        # a pruned model is what gets exported; the unpruned one stays the reference row
        roles=(REFERENCE,) if config.prune is not None else (REFERENCE, FP32),
        data=_data(config),
        baseline=baseline,
        task=section.task,
        config=_hf_config(config, section.config),
    )


def _hf_config(config: PipelineConfig, text: str | None) -> str | None:
    """[model] config: inline JSON stays as it is; a file path resolves beside the pipeline."""
    if text is None or text.lstrip().startswith("{"):
        return text
    return str(config.resolve(text))


def _data(config: PipelineConfig) -> dict[str, DataSource]:
    data: dict[str, DataSource] = {}
    if config.model.eval is not None:
        data[EVAL] = DataFile(config.resolve(config.model.eval), "[model] eval", labelled=True)
    elif config.model.source == "demo":
        data[EVAL] = DemoSplit("test")
    if config.prune is not None and config.prune.train is not None:
        data[TRAIN] = DataFile(config.resolve(config.prune.train), "[prune] train")
    if config.quantize is not None and config.quantize.calib is not None:
        data[CALIB] = DataPath(config.resolve(config.quantize.calib))
    return data


def _quantize(config: PipelineConfig) -> QuantizeStep:
    section = config.quantize
    onnx = artifact_role(FP32, Format.ONNX)
    jobs = tuple(
        QuantizeJob(
            f"int8-{preset}",
            f"int8-{preset}",
            QuantizeOptions(
                target=preset, method=section.method, max_drop=section.max_drop, bench=False
            ),
            message=f"quantizing model.onnx with preset {preset}",
        )
        for preset in section.presets
    )
    return QuantizeStep(jobs, source=onnx)


def _engines(config: PipelineConfig) -> EnginesStep:
    precisions = [Precision(p) for p in config.engines.precisions]
    tensorrt_int8 = artifact_role("int8-tensorrt", Format.ONNX)  # the "tensorrt" preset's file
    return EnginesStep(
        precisions=tuple(p for p in precisions if p is not Precision.INT8),
        int8_source=tensorrt_int8 if Precision.INT8 in precisions else None,
        message="building TensorRT engines: " + ", ".join(p.value for p in precisions),
    )


def _bench_config(config: PipelineConfig) -> BenchConfig:
    bench = config.bench
    return BenchConfig(
        batches=bench.batches, min_time_s=bench.min_time_s, warmup=bench.warmup,
        threads=bench.threads,
    )  # fmt: skip
