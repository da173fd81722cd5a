"""The deployment search: build every runtime x precision candidate, verify, time, pick.

Each candidate is built (export, ORT or PT2E INT8, compile, lower), held to the accuracy budget
on held-out data through the evaluator, and timed through the bench layer; the fastest verified
one is chosen and every other one gets the reason it lost. Candidates a runtime cannot run here
are skipped with the reason; past `time_budget_s` the rest are not tried.

The measure follows the model's first output as quantize's does (docs/design.md, "Accuracy
measures"): top-1 or agreement for class scores, cosine for embeddings and hidden states, SQNR
or relative error for other tensors, always against FP32 eager on the eval data.
"""

from __future__ import annotations

import enum
import gc
import logging
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from torchship.artifact import Artifact
from torchship.calibration import QuantizeOptions, quantize
from torchship.calibration.accuracy import Accuracy
from torchship.calibration.budget import BudgetOptions
from torchship.calibration.eager_check import EagerCheck, eager_check, measure_text
from torchship.calibration.metrics import Budget, Metric
from torchship.data import LABELS_KEY, load_arrays
from torchship.errors import CheckFailedError, ToolchainError, first_line
from torchship.exporter import ExportOptions
from torchship.exporter.checked import export_checked
from torchship.files import atomic_write_json
from torchship.loaded import LoadedModel
from torchship.manifest import build_manifest, write_manifest
from torchship.quantize_pt2e import quantize_pt2e
from torchship.runtimes import BenchConfig, bench_runner, get_runner, require_available
from torchship.runtimes.evaluate import evaluate
from torchship.staging import staged_output

__all__ = [
    "Candidate",
    "CandidateResult",
    "Outcome",
    "Builds",
    "TuneReport",
    "default_candidates",
    "rank",
    "search",
    "tune_model",
]

log = logging.getLogger(__name__)

#: The top1/agreement budget of the search, points (stricter than one quantize's 1.0: the
#: search picks among many candidates and ships one without a second look).
DEFAULT_MAX_DROP = 0.5


class Outcome(str, enum.Enum):
    CHOSEN = "chosen"
    VERIFIED = "verified"  # within budget, but slower than the chosen one
    FAILED = "failed"  # built and run, over the accuracy budget
    SKIPPED = "skipped"  # this machine cannot build or run it
    NOT_TRIED = "not tried"  # the time budget was spent first


@dataclass(frozen=True)
class Candidate:
    """One way to deploy: `build(builds)` makes the artifact that `runtime` runs."""

    name: str
    runtime: str
    precision: str
    build: Callable[[Builds], Artifact]


@dataclass
class CandidateResult:
    candidate: Candidate
    outcome: Outcome
    reason: str = ""
    artifact: Artifact | None = None
    drop: float | None = None  # top1/agreement drop vs FP32 eager, percentage points
    p50_ms: float | None = None
    speedup: float | None = None  # reference p50 / this p50
    facts: dict = field(default_factory=dict)
    metric: str = Metric.TOP1.value
    #: what the budget reads: drop points (top1, agreement), mean cosine, SQNR dB, relerr
    value: float | None = None
    accuracy: Accuracy | None = None  # every measure, when the evaluator computed them

    @property
    def measured(self) -> str:
        """The measure in words: "drop 0.25 points", "mean cosine 0.9981"..."""
        value = self.drop if self.value is None else self.value
        return "" if value is None else measure_text(self.metric, value)

    def to_dict(self) -> dict:
        return {
            "name": self.candidate.name,
            "runtime": self.candidate.runtime,
            "precision": self.candidate.precision,
            "outcome": self.outcome.value,
            "reason": self.reason,
            "artifact": None if self.artifact is None else str(self.artifact.path),
            "drop_points": None if self.drop is None else round(self.drop, 4),
            "metric": self.metric,
            "value": None if self.value is None else round(self.value, 6),
            "accuracy": None if self.accuracy is None else self.accuracy.to_dict(),
            "p50_ms": None if self.p50_ms is None else round(self.p50_ms, 4),
            "speedup": None if self.speedup is None else round(self.speedup, 4),
            "runtime_facts": self.facts,
        }


@dataclass
class TuneReport:
    results: list[CandidateResult]
    batch: int
    max_drop: float
    reference: str
    #: the measure and its budget; None: top1 within `max_drop` (the pipeline's search)
    budget: Budget | None = None
    chosen_by: str = ""
    warnings: tuple[str, ...] = ()

    @property
    def chosen(self) -> CandidateResult | None:
        return next((r for r in self.results if r.outcome is Outcome.CHOSEN), None)

    @property
    def measure(self) -> Budget:
        return self.budget or Budget(Metric.TOP1, self.max_drop)

    def to_dict(self) -> dict:
        chosen = self.chosen
        return {
            "batch": self.batch,
            "max_drop": self.max_drop,
            "metric": self.measure.metric.value,
            "budget": self.measure.limit,
            "budget_flag": self.measure.flag,
            "chosen_by": self.chosen_by,
            "warnings": list(self.warnings),
            "reference": self.reference,
            "chosen": None if chosen is None else chosen.candidate.name,
            "candidates": [r.to_dict() for r in self.results],
        }


class Builds:
    """What candidates share while the search runs: the model, data, folder, and the artifacts
    built so far (an INT8 QDQ file serves ORT and OpenVINO; it is made once)."""

    def __init__(
        self,
        model: LoadedModel,
        folder: Path,
        *,
        calib: Mapping[str, np.ndarray],
        eval_data: Mapping[str, np.ndarray],
        max_drop: float | None = None,
        threads: int | None,
        budget: BudgetOptions | None = None,
    ) -> None:
        self.model, self.folder = model, Path(folder)
        self.calib, self.eval_data = calib, eval_data
        self.threads = threads
        # what was asked (a flag the chosen metric does not read is a warning), then defaults
        self.asked = budget or BudgetOptions()
        if max_drop is not None:
            self.asked = replace(self.asked, max_drop=max_drop)
        drop = DEFAULT_MAX_DROP if self.asked.max_drop is None else self.asked.max_drop
        self.options = replace(self.asked, max_drop=drop)
        self._made: dict[str, Artifact] = {}
        self._failed: dict[str, ToolchainError] = {}
        self._check: EagerCheck | None = None

    @property
    def max_drop(self) -> float:
        return self.options.max_drop

    def check(self) -> EagerCheck:
        """The metric, its budget and FP32 eager's reference outputs, computed on first use."""
        if self._check is None:
            self._check = eager_check(
                self.model, self.eval_data, asked=self.asked, options=self.options
            )
        return self._check

    def once(self, key: str, make: Callable[[Path], Artifact]) -> Artifact:
        """The artifact `key`, made by `make(folder)` on first use. A failed make leaves no
        folder, and its error is raised again for every other candidate sharing `key` (ORT and
        OpenVINO share the INT8 file) rather than made again."""
        if key in self._failed:
            raise self._failed[key]
        if key not in self._made:
            folder = self.folder / key
            folder.mkdir(parents=True, exist_ok=True)
            try:
                self._made[key] = make(folder)
            except ToolchainError as exc:
                shutil.rmtree(folder, ignore_errors=True)
                self._failed[key] = exc
                raise
            except BaseException:
                shutil.rmtree(folder, ignore_errors=True)
                raise
        return self._made[key]

    def reuse(self, key: str, artifact: Artifact) -> None:
        """Serve `key` with `artifact`, made elsewhere (the pipeline's own export or INT8)."""
        self._made[key] = artifact

    def exported(self, fmt: str) -> Artifact:
        """The FP32 `fmt` file, checked against eager PyTorch (ParityError when it differs)."""
        options = ExportOptions(threads=self.threads, dynamo=False if fmt == "onnx" else None)
        return self.once(
            fmt, lambda d: export_checked(self.model, d, formats=[fmt], options=options)[0][0]
        )

    def ort_int8(self) -> Artifact:
        # A few nodes kept in FP32 at most: the search does not spend long on one candidate.
        # The search's metric and budget, so an encoder's INT8 is not judged by argmax.
        budget = self.check().budget
        options = QuantizeOptions(
            bench=False, threads=self.threads, max_excluded=4, metric=budget.metric.value,
            **{budget.option: budget.limit},
        )  # fmt: skip
        return self.once(
            "int8",
            lambda d: quantize(
                self.exported("onnx"), d, calib=dict(self.calib), eval_data=dict(self.eval_data),
                options=options,
            ).artifact,
        )  # fmt: skip

    def pt2e_int8(self, target: str) -> Artifact:
        # Under a top-1 budget, PT2E's own fallback keeps the modules INT8 hurts most in FP32
        # (calibration/pt2e_fallback.py); other measures are the search's check alone.
        budget = self.check().budget
        by_top1 = budget.metric is Metric.TOP1
        return self.once(
            f"int8-{target}",
            lambda d: quantize_pt2e(
                self.model, d, target=target, calib=dict(self.calib),
                eval_data=dict(self.eval_data) if by_top1 else None,
                max_drop=budget.limit if by_top1 else None, max_excluded=4,
                threads=self.threads, bench=False,
            ).artifact,
        )  # fmt: skip


def default_candidates() -> list[Candidate]:
    """Every runtime x precision torchship builds on CPU; the first is the reference."""
    return [
        Candidate("ort fp32", "ort-cpu", "fp32", lambda b: b.exported("onnx")),
        Candidate("ort int8", "ort-cpu", "int8", lambda b: b.ort_int8()),
        Candidate("openvino fp32", "openvino", "fp32", lambda b: b.exported("onnx")),
        Candidate("openvino bf16", "openvino-bf16", "bf16", lambda b: b.exported("onnx")),
        Candidate("openvino int8", "openvino", "int8", lambda b: b.ort_int8()),
        Candidate("aoti fp32", "aoti", "fp32", lambda b: b.exported("aoti")),
        Candidate("aoti int8", "aoti", "int8", lambda b: b.pt2e_int8("x86-inductor")),
        Candidate("executorch fp32", "executorch", "fp32", lambda b: b.exported("executorch")),
        Candidate("executorch int8", "executorch", "int8", lambda b: b.pt2e_int8("xnnpack")),
        Candidate("torch eager", "torch", "fp32", lambda b: b.model.eager()),
    ]


Measure = Callable[[str, Artifact], tuple[float, dict]]


def search(
    candidates: Sequence[Candidate],
    builds: Builds,
    *,
    batch: int = 8,
    config: BenchConfig | None = None,
    time_budget_s: float | None = None,
    measure: Measure | None = None,
) -> TuneReport:
    """Build, verify and time each candidate in order; the first is the speed reference.

    `measure(runtime, artifact) -> (p50 ms, runtime facts)` defaults to the bench layer at
    `batch` with `config`.
    """
    config = config or BenchConfig(warmup=5, min_time_s=1.0, threads=builds.threads)
    measure = measure or _bench_measure(config, batch)
    check = builds.check()
    start, results = time.monotonic(), []
    for candidate in candidates:
        spent = time_budget_s is not None and time.monotonic() - start > time_budget_s
        if results and spent:  # the reference always runs
            results.append(CandidateResult(candidate, Outcome.NOT_TRIED, "time budget spent"))
            continue
        results.append(_try(candidate, builds, measure))
        gc.collect()
    rank(results)
    return TuneReport(
        results, batch, builds.max_drop, candidates[0].name if candidates else "",
        budget=check.budget, chosen_by=check.choice.reason, warnings=check.warnings,
    )  # fmt: skip


def _try(candidate: Candidate, builds: Builds, measure: Measure) -> CandidateResult:
    get_runner(candidate.runtime)  # an unknown name is a ConfigError, not a skip
    try:
        require_available(candidate.runtime)
        artifact = candidate.build(builds)
    except CheckFailedError as exc:  # built, but it does not compute what eager does
        return CandidateResult(candidate, Outcome.FAILED, first_line(exc, limit=160))
    except ToolchainError as exc:  # unavailable here, or a quantizer/lowering refused the model
        return CandidateResult(candidate, Outcome.SKIPPED, first_line(exc, limit=160))
    check = builds.check()
    feeds = {s.name: builds.eval_data[s.name] for s in builds.model.inputs}
    outputs = evaluate(artifact, feeds, runtime=candidate.runtime, threads=builds.threads)
    accuracy = check.accuracy(outputs)
    value, missed = check.verdict(accuracy)
    metric = check.choice.metric
    result = CandidateResult(
        candidate, Outcome.FAILED if missed else Outcome.VERIFIED, missed, artifact=artifact,
        drop=value if metric in (Metric.TOP1, Metric.AGREEMENT) else None, metric=metric.value,
        value=value, accuracy=accuracy,
    )  # fmt: skip
    result.p50_ms, result.facts = measure(candidate.runtime, artifact)
    log.info("tune: %s p50 %.3f ms, %s", candidate.name, result.p50_ms, result.measured)
    return result


def rank(results: list[CandidateResult]) -> None:
    """Speedups against the first candidate; the fastest verified one is chosen, the others
    get the reason they lost."""
    timed = [r for r in results if r.p50_ms]
    base = results[0].p50_ms if results and results[0].p50_ms else None
    for r in timed:
        r.speedup = base / r.p50_ms if base else None
    verified = [r for r in timed if r.outcome is Outcome.VERIFIED]
    if not verified:
        return
    best = min(verified, key=lambda r: r.p50_ms)
    best.outcome = Outcome.CHOSEN
    best.reason = f"fastest verified: p50 {best.p50_ms:.3f} ms, {best.measured}"
    for r in verified:
        if r is not best:
            r.reason = f"slower: p50 {r.p50_ms:.3f} ms, {r.p50_ms / best.p50_ms:.2f}x the chosen"


def _bench_measure(config: BenchConfig, batch: int) -> Measure:
    def run(runtime: str, artifact: Artifact) -> tuple[float, dict]:
        result = bench_runner(runtime, artifact, config=config, batch=batch)
        return result.latency_ms["p50"], result.runtime_facts

    return run


REPORT_NAME = "tune_report.json"


def tune_model(
    model: LoadedModel,
    out: str | Path,
    *,
    calib: str | Path,
    eval_data: str | Path,
    max_drop: float | None = None,
    budget: BudgetOptions | None = None,
    batch: int = 8,
    threads: int | None = None,
    min_time_s: float = 1.0,
    time_budget_s: float | None = None,
    candidates: Sequence[Candidate] | None = None,
    command: Sequence[str] | None = None,
) -> TuneReport:
    """Search the candidates for `model`; write every built artifact, `tune_report.json` and a
    manifest whose `release` names the chosen artifact to `out` (staged, moved when complete).

    `budget` holds `--metric` and the limits (None: chosen from the output, quantize's
    defaults); `max_drop`, when given, replaces its top1/agreement limit (default 0.5 points).
    """
    budget = budget or BudgetOptions()
    if max_drop is not None:
        budget = replace(budget, max_drop=max_drop)  # validated again: ConfigError when bad
    calib_arrays = load_arrays(calib, inputs=model.inputs, what="--calib")
    calib_arrays.pop(LABELS_KEY, None)
    eval_arrays = load_arrays(eval_data, inputs=model.inputs, what="--eval")
    config = BenchConfig(warmup=5, min_time_s=min_time_s, batches=(batch,), threads=threads)
    with staged_output(out) as stage:
        builds = Builds(
            model, stage, calib=calib_arrays, eval_data=eval_arrays, threads=threads,
            budget=budget,
        )  # fmt: skip
        report = search(
            candidates or default_candidates(), builds, batch=batch, config=config,
            time_budget_s=time_budget_s,
        )  # fmt: skip
        atomic_write_json(stage / REPORT_NAME, report.to_dict())
        chosen = report.chosen
        artifacts = [] if chosen is None or chosen.artifact.path.name == "<eager>" else [
            chosen.artifact
        ]  # fmt: skip
        release = None if chosen is None else {
            "candidate": chosen.candidate.name, "runtime": chosen.candidate.runtime,
            "artifact": artifacts[0].path.relative_to(stage).as_posix() if artifacts else None,
        }  # fmt: skip
        manifest = build_manifest(
            stage, model=model, artifacts=artifacts, command=command,
            metrics={"tune": report.to_dict()}, gates={"passed": chosen is not None},
            extra={"release": release},
        )  # fmt: skip
        write_manifest(stage, manifest)
    return report
