"""`quantize --target xnnpack|x86-inductor`: a model source or `.pt2` -> a checked PT2E INT8 file.

It joins the two layers that must not import each other: the exporter captures the model and
lowers or compiles the quantized graph, calibration quantizes it (`calibration/pt2e.py`).
Then the INT8 file is compared with FP32 eager on the first eval batches (the comparator, int8
profile) and, with labelled eval data, its top-1 drop is held to the budget (the evaluator).
A missed check still writes the artifact, marked: `passed` is then False (exit 1).
"""

from __future__ import annotations

import itertools
import logging
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np

from torchship.artifact import Artifact, Precision
from torchship.calibration.accuracy import within_budget
from torchship.calibration.fallback import DEFAULT_MAX_FALLBACK_TIME_S
from torchship.calibration.proof import bench_batch_for, timed_vs_fp32
from torchship.calibration.pt2e import PT2E_TARGETS, quantize_graph
from torchship.calibration.pt2e_fallback import quantize_within_budget
from torchship.calibration.quantize import QuantizeResult
from torchship.data import LABELS_KEY, DataSet, ShortBatch, load_arrays, open_data
from torchship.errors import ConfigError, ToolchainError, first_line
from torchship.exporter.base import ExportOptions, export_model
from torchship.exporter.exported_program import to_exported_program
from torchship.files import atomic_write_json
from torchship.interrupts import reraise_interrupt
from torchship.loaded import LoadedModel
from torchship.manifest import build_manifest, write_manifest
from torchship.runtimes.base import get_runner, require_available
from torchship.runtimes.compare import compare_output
from torchship.runtimes.evaluate import evaluate, evaluate_top1
from torchship.runtimes.tolerance import tolerance_for
from torchship.sources import load_model
from torchship.specs import InputSpec
from torchship.staging import staged_output

__all__ = ["PT2E_TARGET_NAMES", "quantize_pt2e"]

log = logging.getLogger(__name__)

PT2E_TARGET_NAMES = tuple(PT2E_TARGETS.names())
REPORT_NAME = "quantize_report.json"
_PARITY_BATCHES = 4
#: Seconds each side of the timing proof runs in all.
_TIMING_S = 1.5


def quantize_pt2e(
    source: str | LoadedModel,
    out: str | Path | None = None,
    *,
    target: str,
    calib: str | Path | Mapping[str, np.ndarray],
    eval_data: str | Path | Mapping[str, np.ndarray] | None = None,
    max_drop: float | None = None,
    max_excluded: int | None = None,
    max_fallback_time_s: float | None = DEFAULT_MAX_FALLBACK_TIME_S,
    inputs: Sequence[InputSpec] | None = None,
    weights: str | Path | None = None,
    trust_pickle: bool = False,
    task: str | None = None,
    config: str | None = None,
    samples: int | None = None,
    seed: int = 0,
    threads: int | None = None,
    bench: bool = True,
    command: Sequence[str] | None = None,
) -> QuantizeResult:
    """PT2E INT8 of `source` for `target`; writes the artifact, a report and a manifest to `out`.

    With labelled `eval_data`, a top-1 drop over `max_drop` keeps the most sensitive modules
    in FP32 (`calibration/pt2e_fallback.py`: at most `max_excluded`, within
    `max_fallback_time_s`); the report's `fallback` says what was tried and kept. With `bench`,
    the INT8 file is timed against the FP32 file of the same format on the same runtime, in
    interleaved rounds (`timing`); one that is not faster is marked with a warning.
    `out` defaults to `<source stem>-int8-<target>/` beside a file source, else in the current
    folder only when given. BackendUnavailableError (exit 3) when the target's packages or
    runtime are missing, before any work.
    """
    spec = PT2E_TARGETS.get(target)
    require_available(spec.runtime)
    spec.quantizer()  # fails now, naming the extra, rather than after loading the model
    max_drop = 1.0 if max_drop is None else max_drop
    if not 0 <= max_drop <= 100:
        raise ConfigError(f"--max-drop {max_drop}: must be 0..100 percentage points")
    if max_excluded is not None and max_excluded < 0:
        raise ConfigError(f"--max-fp32-nodes {max_excluded}: must be >= 0")
    if max_fallback_time_s is not None and not max_fallback_time_s > 0:
        raise ConfigError(f"--max-fallback-time {max_fallback_time_s}: must be > 0 seconds")
    model = source if isinstance(source, LoadedModel) else load_model(
        source, inputs=inputs, weights=weights, trust_pickle=trust_pickle, task=task,
        config=config,
    )  # fmt: skip
    out_dir = Path(out) if out is not None else _default_out(model, target)
    calib_set = open_data(calib, inputs=model.inputs, samples=samples, seed=seed)
    graph = to_exported_program(model).module()
    eval_arrays = None if eval_data is None else load_arrays(eval_data, inputs=model.inputs,
                                                             what="--eval")  # fmt: skip
    fallback = None
    if eval_arrays is not None and LABELS_KEY in eval_arrays:
        lowered = (
            _lowered_outputs(model, spec, eval_arrays, threads) if spec.trials_lowered else None
        )
        module, fallback = quantize_within_budget(
            model, graph, target=target, calib=calib_set, eval_data=eval_arrays,
            max_drop=max_drop, max_excluded=max_excluded, max_time_s=max_fallback_time_s,
            outputs=lowered,
        )  # fmt: skip
    else:
        module = quantize_graph(graph, inputs=model.inputs, target=target, calib=calib_set)
    quantized = replace(model, module=module)
    warnings: list[str] = []
    if fallback is None and max_excluded is not None:
        warnings.append("--max-fp32-nodes is not read: the fallback needs --eval data with labels")
    with staged_output(out_dir) as stage:
        (built,) = export_model(
            quantized, stage, formats=[spec.format.value], options=ExportOptions(threads=threads),
            stem=f"model.int8-{target}",
        )  # fmt: skip
        details = {**built.details, "quantizer": spec.about, "calibration": calib_set.describe()}
        if fallback is not None and fallback.excluded:
            details["kept_fp32"] = list(fallback.excluded)
        artifact = replace(built, precision=Precision.INT8, details=details)
        report = _check(model, artifact, spec.runtime, calib_set, eval_data, max_drop, warnings)
        report.update(target=target, calibration=calib_set.describe(), warnings=warnings)
        report["fallback"] = None if fallback is None else fallback.to_dict()
        if fallback is not None and fallback.all_fp32:  # never "pass" on nothing quantized
            report["passed"] = False
            warnings.append(
                f"the accuracy fallback kept all {fallback.candidates} quantizable modules in "
                f"FP32: the file computes in float ({fallback.stopped}); try a looser budget or "
                "more --calib data"
            )
        report["timing"] = _timing(model, artifact, spec, threads, warnings) if bench else None
        atomic_write_json(stage / REPORT_NAME, report)
        manifest = build_manifest(
            stage, model=model, artifacts=[artifact], command=command,
            metrics={k: report[k] for k in ("parity", "accuracy")},
            gates={"passed": report["passed"]}, extra={"quantization": {"target": target}},
        )  # fmt: skip
        write_manifest(stage, manifest)
    final = replace(artifact, path=out_dir / artifact.path.name)
    return QuantizeResult(
        final, out_dir, report["passed"], report, out_dir / "manifest.json", tuple(warnings)
    )


def _lowered_outputs(model: LoadedModel, spec, data: Mapping[str, np.ndarray], threads):
    """module -> the first output of its lowered file on `data`, built in a scratch folder."""
    feeds = {s.name: data[s.name] for s in model.inputs}

    def outputs(module) -> np.ndarray:
        with tempfile.TemporaryDirectory(prefix="torchship-pt2e-") as scratch:
            (built,) = export_model(replace(model, module=module), Path(scratch),
                                    formats=[spec.format.value],
                                    options=ExportOptions(threads=threads))  # fmt: skip
            return evaluate(built, feeds, runtime=spec.runtime, threads=threads).logits

    return outputs


def _timing(model: LoadedModel, artifact: Artifact, spec, threads, warnings: list[str]) -> dict:
    """INT8 vs the FP32 file of the same format on `spec.runtime`, built in a scratch folder
    (an AOTInductor build is also cached, as every one is). A failure is a warning: the INT8
    file is already checked."""
    try:
        with tempfile.TemporaryDirectory(prefix="torchship-pt2e-") as scratch:
            options = ExportOptions(threads=threads)
            (fp32,) = export_model(model, Path(scratch), formats=[spec.format.value],
                                   options=options)  # fmt: skip
            timing = timed_vs_fp32(
                fp32, artifact, runtime=spec.runtime, batch=bench_batch_for(artifact),
                threads=threads, seconds=_TIMING_S,
            )  # fmt: skip
    except ToolchainError as exc:
        reraise_interrupt(exc)
        warnings.append(f"the INT8-vs-FP32 timing failed: {first_line(exc)}")
        return {"runtime": spec.runtime, "error": first_line(exc)}
    timing["timed"] += f", vs FP32 {spec.format.value}"
    if not timing["faster"]:
        warnings.append(
            f"INT8 is NOT faster than FP32 on {spec.runtime}: {timing['speedup']:.2f}x at batch "
            f"{timing['batch']} (p50 {timing['p50_ms']:.3f} ms vs {timing['fp32_p50_ms']:.3f} "
            "ms); ship the FP32 file or try `torchship tune`"
        )
    return timing


def _default_out(model: LoadedModel, target: str) -> Path:
    path = Path(model.source)
    if path.suffix and ":" not in path.name:
        return path.parent / f"{path.stem}-int8-{target}"
    raise ConfigError("-o is required when the model is not a file (where should it go?)")


def _check(
    model: LoadedModel,
    artifact: Artifact,
    runtime: str,
    calib: DataSet,
    eval_data,
    max_drop: float,
    warnings: list[str],
) -> dict:
    data = calib if eval_data is None else open_data(eval_data, inputs=model.inputs)
    parity = _parity(model, artifact, runtime, data)
    if not parity["passed"]:
        warnings.append(f"parity vs FP32 eager failed: {parity['message']}")
    accuracy = _accuracy(model, artifact, runtime, eval_data, max_drop, warnings)
    passed = parity["passed"] and (accuracy is None or accuracy["passed"])
    return {"runtime": runtime, "parity": parity, "accuracy": accuracy, "passed": passed}


def _parity(model: LoadedModel, artifact: Artifact, runtime: str, data: DataSet) -> dict:
    """INT8 vs FP32 eager on the first batches of real data (random inputs fall outside the
    calibrated ranges), with the int8 tolerance profile."""
    profile = tolerance_for("int8")
    cases = []
    with get_runner(runtime)(artifact) as runner:
        for batch in itertools.islice(data.batches(short=ShortBatch.PAD), _PARITY_BATCHES):
            expected, got = model.run(batch.feeds), runner.infer(batch.feeds)
            cases += [
                compare_output(batch.origin, name, expected[name], got, profile)
                for name in model.outputs
            ]
    worst = min(cases, key=lambda c: c.cosine)
    failed = next((c for c in cases if not c.passed), None)
    return {
        "passed": failed is None,
        "comparisons": len(cases),
        "min_cosine": round(worst.cosine, 6),
        "min_cosine_required": profile.min_cosine,
        "message": "" if failed is None else (failed.reason or f"cosine {failed.cosine:.5f}"),
    }


def _accuracy(model, artifact, runtime, eval_data, max_drop, warnings) -> dict | None:
    if eval_data is None:
        warnings.append("no --eval data: the top-1 budget is not checked (parity only)")
        return None
    arrays = load_arrays(eval_data, inputs=model.inputs, what="--eval")
    labels = arrays.pop(LABELS_KEY, None)
    if labels is None:
        warnings.append("--eval data has no labels: the top-1 budget is not checked")
        return None
    fp32 = evaluate_top1("torch", model.eager(), arrays, labels)
    int8 = evaluate_top1(runtime, artifact, arrays, labels)
    drop = 100.0 * (fp32 - int8)
    passed = within_budget(drop, max_drop)
    if not passed:
        warnings.append(f"accuracy budget missed: drop {drop:.2f} points > {max_drop:g}")
    return {
        "fp32_top1": round(fp32, 6),
        "top1": round(int8, 6),
        "drop": round(drop, 4),
        "max_drop": max_drop,
        "samples": int(len(labels)),
        "passed": passed,
    }
