"""The deployment search inside a pipeline: build every candidate, let `measure` time them,
then pick the release.

`CandidatesStep` builds what the pipeline's other steps did not make, for each model variant
(the FP32 model and, when the pipeline prunes, the pruned one): AOTInductor and ExecuTorch
files, their PT2E INT8 versions, and asks for the ONNX files to be measured on OpenVINO too
(FP32, bf16 where the CPU has it, the INT8 QDQ file as it is). `ReleaseStep` runs after the
measure step: every measured row at the first batch is a candidate, held to the accuracy
budget on the eval data; the fastest verified one is the release, and every other one gets the
reason it lost (`torchship.tune.rank`, the same rule as `torchship tune`).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from torchship.artifact import Artifact, Format, Precision
from torchship.data import LABELS_KEY, load_arrays
from torchship.errors import CheckFailedError, ConfigError, ToolchainError, first_line
from torchship.files import atomic_write_json
from torchship.pipeline.results import Measurement
from torchship.pipeline.step import (
    CALIB,
    EAGER,
    EVAL,
    FP32,
    PRUNED,
    PipelineState,
    Step,
    StepResult,
    artifact_role,
)
from torchship.pipeline.steps.measure import runtimes_for
from torchship.runtimes import require_available
from torchship.tune import (
    Builds,
    Candidate,
    CandidateResult,
    Outcome,
    TuneReport,
    default_candidates,
    rank,
)

__all__ = ["CandidatesStep", "ReleaseStep", "SEARCH_REPORT", "release_summary"]

#: the search's table in the bundle
SEARCH_REPORT = "tune_report.json"
#: slack when comparing a drop with its budget (one image in 400 is exactly 0.25 points)
_TOLERANCE = 1e-9


def _prefix(variant: str) -> str:
    return "" if variant == FP32 else f"{variant}/"


@dataclass(frozen=True)
class CandidatesStep(Step):
    """Build each runtime x precision candidate of each variant the pipeline has; a candidate
    this machine cannot build or run is recorded with the reason, and after `time_budget_s`
    seconds of building the rest are not tried."""

    name = "tune"
    writes = True

    max_drop: float = 0.5
    time_budget_s: float | None = None
    threads: int | None = None
    variants: tuple[str, ...] = (FP32, PRUNED)
    calib: str = CALIB
    eval: str = EVAL

    def requires(self) -> dict[str, str]:
        return {
            self.eval: "[tune] needs labelled eval data: set [model] eval",
            self.calib: "[tune] needs calibration data for its INT8 candidates: set "
            "[quantize] calib",
        }

    def provides(self) -> tuple[str, ...]:
        roles = []
        for variant in self.variants:
            roles.append(artifact_role(f"{_prefix(variant)}onnx", Format.ONNX))
            prefix = _prefix(variant)
            for folder, fmt in _BUILT:
                roles.append(artifact_role(f"{prefix}{folder}", fmt))
            roles.append(artifact_role(f"{prefix}int8", Format.ONNX))
        return tuple(roles)

    def run(self, state: PipelineState) -> StepResult:
        result = StepResult()
        start = time.monotonic()
        calib = _arrays(state.data[self.calib], state, labels=False)
        eval_data = _arrays(state.data[self.eval], state, labels=True)
        for variant in (v for v in self.variants if v in state.models):
            prefix = _prefix(variant)
            builds = Builds(
                state.models[variant], state.stage / prefix, calib=calib, eval_data=eval_data,
                max_drop=self.max_drop, threads=self.threads,
            )  # fmt: skip
            onnx = artifact_role(variant, Format.ONNX)
            if onnx in state.artifacts:
                builds.reuse("onnx", state.artifacts[onnx])
            int8 = _pipeline_int8(state, onnx)
            if int8 is not None:
                builds.reuse("int8", int8)
            for candidate in default_candidates():
                if candidate.runtime == "torch":  # the eager reference row is always measured
                    continue
                name = f"{prefix}{candidate.name}"
                if self.time_budget_s is not None and time.monotonic() - start > self.time_budget_s:
                    result.skipped[name] = f"not tried: time budget {self.time_budget_s:g} s spent"
                    continue
                state.progress(f"search: building {name}")
                self._build(candidate, name, builds, prefix, state, result)
        return result

    def _build(
        self,
        candidate: Candidate,
        name: str,
        builds: Builds,
        prefix: str,
        state: PipelineState,
        result: StepResult,
    ) -> None:
        try:
            require_available(candidate.runtime)
            artifact = candidate.build(builds)
        except CheckFailedError as exc:  # built, but not what eager computes: it cannot ship
            result.skipped[name] = f"failed: {first_line(exc, limit=160)}"
            return
        except ToolchainError as exc:
            result.skipped[name] = first_line(exc, limit=160)
            return
        role = _role_of(artifact, {**state.artifacts, **result.artifacts}, state.stage)
        if role not in state.artifacts and role not in result.artifacts:
            result.artifacts[role] = artifact
            origin = _origin(artifact, prefix)
            if origin is not None:
                result.origins[role] = origin
            elif artifact.precision is Precision.FP32:  # export_checked saved eager's I/O
                result.referenced.add(role)
        if candidate.runtime not in runtimes_for(artifact.format):
            extra = (*state.measure_on.get(role, ()), *result.measure_on.get(role, ()))
            result.measure_on[role] = (*extra, candidate.runtime)


def _pipeline_int8(state: PipelineState, onnx: str) -> Artifact | None:
    """The pipeline's first static CPU INT8 file made from `onnx` (a quantize step's), if any:
    the search's ORT and OpenVINO INT8 candidates run it rather than quantizing again."""
    for role, origin in state.origins.items():
        artifact = state.artifacts[role]
        details = artifact.details
        cpu = details.get("mode") == "static" and details.get("preset") != "tensorrt"
        if origin == onnx and artifact.format is Format.ONNX and cpu:
            return artifact
    return None


#: the folders and formats the search builds beside the pipeline's own files
_BUILT = (
    ("aoti", Format.AOTI),
    ("executorch", Format.EXECUTORCH),
    ("int8-x86-inductor", Format.AOTI),
    ("int8-xnnpack", Format.EXECUTORCH),
)


def _role_of(artifact: Artifact, made: Mapping[str, Artifact], stage: Path) -> str:
    """The role an artifact already has, else `<folder in the bundle>/<format>`."""
    for role, known in made.items():
        if known.path == artifact.path:
            return role
    folder = artifact.path.parent.relative_to(stage).as_posix()
    return artifact_role(folder, artifact.format)


def _origin(artifact: Artifact, prefix: str) -> str | None:
    """A PT2E INT8 file's FP32 counterpart in the same format (for the "slower" check)."""
    if artifact.precision is not Precision.INT8:
        return None
    folder = {Format.AOTI: "aoti", Format.EXECUTORCH: "executorch"}.get(artifact.format)
    return None if folder is None else artifact_role(f"{prefix}{folder}", artifact.format)


def _arrays(data, state: PipelineState, *, labels: bool) -> dict[str, np.ndarray]:
    """A data role as arrays (a path role is read with the model's inputs)."""
    if isinstance(data, Path):
        arrays = load_arrays(data, inputs=state.models[FP32].inputs, what="[tune] data")
    else:
        arrays = dict(data)
    if not labels:
        arrays.pop(LABELS_KEY, None)
    elif LABELS_KEY not in arrays:
        raise ConfigError("[tune] needs labelled eval data (a `labels` array)")
    return arrays


@dataclass(frozen=True)
class ReleaseStep(Step):
    """Pick the release among the measured rows at the first batch and write the search's
    table (`tune_report.json`); FP32 ONNX on ort-cpu is the speed reference."""

    name = "release"
    writes = True

    max_drop: float = 0.5

    def run(self, state: PipelineState) -> StepResult:
        batch = state.measurements[0].batch
        rows = [m for m in state.measurements if m.batch == batch and m.role != EAGER]
        eager = next(m for m in state.measurements if m.role == EAGER and m.batch == batch)
        reference = artifact_role(FP32, Format.ONNX)
        rows.sort(key=lambda m: (m.role, m.runtime) != (reference, "ort-cpu"))
        results = [self._verdict(m, eager) for m in rows]
        results += [
            CandidateResult(_unbuilt(name), _skip_outcome(reason), reason)
            for name, reason in state.skipped.items()
        ]
        rank(results)
        report = TuneReport(results, batch, self.max_drop, results[0].candidate.name)
        atomic_write_json(state.stage / SEARCH_REPORT, _bundle_dict(report, state.stage))
        return StepResult(search=report, release=release_summary(report, state.stage))

    def _verdict(self, m: Measurement, eager: Measurement) -> CandidateResult:
        candidate = Candidate(f"{m.label} on {m.runtime}", m.runtime, m.artifact.precision.value,
                              lambda _builds, artifact=m.artifact: artifact)  # fmt: skip
        drop = None
        if eager.accuracy is not None and m.accuracy is not None:
            drop = 100 * (eager.accuracy - m.accuracy)
        result = CandidateResult(candidate, Outcome.VERIFIED, artifact=m.artifact, drop=drop,
                                 p50_ms=m.p50_ms, metric="top1", value=drop)  # fmt: skip
        if m.artifact.details.get("passed") is False:
            result.outcome, result.reason = Outcome.FAILED, "missed its INT8 accuracy budget"
        elif drop is None:
            result.outcome, result.reason = Outcome.FAILED, "no accuracy measured (no eval data)"
        elif drop > self.max_drop + _TOLERANCE:
            result.outcome = Outcome.FAILED
            result.reason = f"accuracy drop {drop:.2f} points > budget {self.max_drop:g}"
        return result


def _unbuilt(name: str) -> Candidate:
    def build(_builds):
        raise RuntimeError(f"{name} was not built")

    return Candidate(name, "", "", build)


def _skip_outcome(reason: str) -> Outcome:
    if reason.startswith("not tried"):
        return Outcome.NOT_TRIED
    return Outcome.FAILED if reason.startswith("failed") else Outcome.SKIPPED


def _bundle_dict(report: TuneReport, stage: Path) -> dict:
    """The report with artifact paths relative to the bundle."""
    data = report.to_dict()
    for row in data["candidates"]:
        if row["artifact"]:
            path = Path(row["artifact"])
            row["artifact"] = path.relative_to(stage).as_posix() if path.is_absolute() else None
    return data


def release_summary(report: TuneReport | None, stage: Path) -> dict | None:
    """The manifest's and report's `release`: the chosen row, or why there is none."""
    if report is None:
        return None
    chosen = report.chosen
    if chosen is None:
        return {"artifact": None, "reason": f"no candidate within {report.max_drop:g} points"}
    return {
        "artifact": chosen.artifact.path.relative_to(stage).as_posix(),
        "runtime": chosen.candidate.runtime,
        "precision": chosen.candidate.precision,
        "drop_points": round(chosen.drop, 4),
        "speedup_vs_onnx": None if chosen.speedup is None else round(chosen.speedup, 4),
        "reason": chosen.reason,
    }
