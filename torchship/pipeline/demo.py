"""`torchship ship` on the embedded demo: a built-in plan run by the pipeline's one runner.

The rows: eager (the reference), each FP32 file format, static INT8 of the ONNX model, the
model pruned to half its channels and distilled (under `pruned/`), the pruned model in INT8
(`pruned/int8/`), and TensorRT engines (`engines/`) where TensorRT and a GPU are present.
Every row gets accuracy on the demo's test set, its drop in points vs eager, p50 latency and
the speedup vs eager and vs the FP32 ONNX model.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path

from torchship.artifact import FILE_FORMATS, Format
from torchship.calibration.quantize import Mode, QuantizeOptions
from torchship.pipeline.plan import Plan, run_plan
from torchship.pipeline.results import ShipReport
from torchship.pipeline.step import CALIB, EVAL, FP32, PRUNED, TRAIN, Step, artifact_role
from torchship.pipeline.steps import (
    CandidatesStep,
    DemoSplit,
    EnginesStep,
    ExportStep,
    LoadStep,
    MeasureStep,
    PruneStep,
    QuantizeJob,
    QuantizeStep,
    ReferencesStep,
    ReleaseStep,
    ReportKind,
    ReportStep,
    SavePrunedStep,
    ShipTableStep,
    ship_report,
)
from torchship.runtimes import BenchConfig

__all__ = ["demo_plan", "ship_demo"]

_CALIB_SAMPLES = 256
_PRUNE_RATIO = 0.5
#: 3 epochs gave 99.25% on the 400 test images, 6 gave 99.50%, 10 give the unpruned 99.75%
#: (one image is 0.25 points), in about 15 s on 2 cores
_DISTILL_EPOCHS = 10
#: the search's budget: top-1 points vs eager on the 400 test images (2 images)
_MAX_DROP = 0.5
#: The demo's few region families are measured well within this (docs/design.md, "INT8 on CPU")
_LATENCY_SEARCH_S = 15.0


def ship_demo(
    out_dir: str | Path = "dist/demo",
    *,
    bench_config: BenchConfig | None = None,
    int8: bool = True,
    prune: bool = True,
    tune: bool = True,
    command: Sequence[str] | None = None,
    progress: Callable[[str], None] | None = None,
) -> ShipReport:
    """Run the whole pipeline on the embedded demo and write the bundle to `out_dir` atomically."""
    plan = demo_plan(out_dir, bench_config=bench_config, int8=int8, prune=prune, tune=tune)
    return ship_report(run_plan(plan, command=command, progress=progress))


def demo_plan(
    out_dir: str | Path = "dist/demo",
    *,
    bench_config: BenchConfig | None = None,
    int8: bool = True,
    prune: bool = True,
    tune: bool = True,
) -> Plan:
    """The demo's steps; only the first batch of `bench_config` (default 8) is measured. With
    `tune`, the deployment search adds its candidates (OpenVINO, AOTInductor, ExecuTorch, PT2E
    INT8) for the model and its pruned copy, and names the fastest verified row the release."""
    config = bench_config or BenchConfig(batches=(8,))
    data = {
        EVAL: DemoSplit("test"),
        TRAIN: DemoSplit("train"),
        CALIB: DemoSplit("train", samples=_CALIB_SAMPLES, labels=False),
    }
    prepare: list[Step] = [LoadStep("demo", data=data)]
    if prune:
        prepare.append(
            PruneStep(ratio=_PRUNE_RATIO, epochs=_DISTILL_EPOCHS, into=PRUNED, eval=EVAL)
        )
    formats = ", ".join(FILE_FORMATS)
    build: list[Step] = [ExportStep(message=f"exporting the demo to {formats}")]
    if int8:
        build.append(_int8(FP32, "the FP32 model", config))
    if prune:
        build.append(SavePrunedStep())
        if int8:
            build.append(_int8(PRUNED, "the pruned model", config))
    if tune:
        build.append(CandidatesStep(max_drop=_MAX_DROP, threads=config.threads))
    build += [
        EnginesStep(),
        ReferencesStep(),
        MeasureStep(config=replace(config, batches=config.batches[:1])),
        *([ReleaseStep(max_drop=_MAX_DROP)] if tune else []),
        ShipTableStep(),
        ReportStep(ReportKind.SHIP),
    ]
    return Plan(Path(out_dir), tuple(prepare), tuple(build))


def _int8(model: str, what: str, config: BenchConfig) -> QuantizeStep:
    """Static INT8 (`auto` preset) in `int8/` beside the model's ONNX file; dynamic INT8 in
    `int8-dynamic/` too for MatMul/Gemm-heavy models. Judged on the demo's test set."""
    prefix = "" if model == FP32 else f"{model}/"
    jobs = tuple(
        QuantizeJob(
            f"{prefix}{folder}",
            f"{prefix}{folder}",
            QuantizeOptions(
                mode=mode,
                bench=False,
                threads=config.threads,
                latency_search_time_s=_LATENCY_SEARCH_S,
            ),  # fmt: skip
            message=f"calibrating INT8 for {what} on {_CALIB_SAMPLES} training images",
            skip_conv_heavy=mode is Mode.DYNAMIC,
        )
        for mode, folder in ((Mode.STATIC, "int8"), (Mode.DYNAMIC, "int8-dynamic"))
    )
    return QuantizeStep(jobs, source=artifact_role(model, Format.ONNX), eval=EVAL, model=model)
