"""The measure step: accuracy and latency of every artifact on its runtimes, and bench.json."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from torchship.artifact import Artifact, Format
from torchship.pipeline.results import Measurement
from torchship.pipeline.step import EVAL, PipelineState, Step, StepResult, feeds_and_labels
from torchship.pipeline.steps.tables import bundle_rows
from torchship.runtimes import (
    BenchConfig,
    BenchDocument,
    BenchResult,
    available_runners,
    bench_document,
    bench_runner,
    default_runtime_for,
    get_runner,
)
from torchship.runtimes.evaluate import evaluate_top1

__all__ = ["MeasureStep", "bench_in_bundle", "runtimes_for"]

#: Extra runtimes tried for an ONNX artifact when present (GPU machines).
_ONNX_RUNTIMES = ("ort-cpu", "ort-cuda", "ort-trt")


def runtimes_for(fmt: Format) -> list[str]:
    """The runtimes able to run `fmt` on this machine."""
    here = set(available_runners())
    if fmt is Format.ONNX:
        return [r for r in _ONNX_RUNTIMES if r in here]
    name = default_runtime_for(fmt) if fmt is not Format.EAGER else "torch"
    return [name] if name in here else []


def bench_in_bundle(results: Sequence[BenchResult], stage: Path) -> BenchDocument:
    """The bench document as bench.json holds it: artifact paths relative to the bundle."""
    return bench_document(
        [
            r
            if r.artifact == "<eager>"
            else replace(r, artifact=_relative(Path(r.artifact), stage))
            for r in results
        ]
    )


@dataclass(frozen=True)
class MeasureStep(Step):
    """Every artifact (eager first) on each of its runtimes (and those the search asked for in
    `measure_on`): top-1 accuracy on the `eval` data when the state has it, then latency at
    each batch of `config`."""

    name = "measure"
    writes = True

    config: BenchConfig = field(default_factory=BenchConfig)
    #: None: every runtime here that runs the format (`runtimes_for`); a tuple: those of them
    #: that run the format, else the format's default runtime
    runtimes: tuple[str, ...] | None = None
    eval: str = EVAL

    def run(self, state: PipelineState) -> StepResult:
        measurements: list[Measurement] = []
        results: list[BenchResult] = []
        for role, artifact in state.artifacts.items():
            label = _label(artifact, state.stage)
            for runtime in self._runtimes(artifact, state.measure_on.get(role, ())):
                state.progress(f"accuracy and latency of {label} on {runtime}")
                accuracy = self._accuracy(runtime, artifact, state)
                for batch in self.config.batches:
                    result = bench_runner(runtime, artifact, config=self.config, batch=batch)
                    results.append(result)
                    p50, p90 = result.p50_ms, result.p90_ms
                    measurements.append(
                        Measurement(role, label, artifact, runtime, batch, accuracy, p50, p90)
                    )
        return StepResult(
            measurements=tuple(measurements),
            rows=tuple(bundle_rows(measurements)),
            bench=bench_in_bundle(results, state.stage),
        )

    def _runtimes(self, artifact: Artifact, extra: tuple[str, ...]) -> list[str]:
        """`runtimes` (or every runtime here) for the format, then the search's `extra` ones."""
        if self.runtimes is None:
            chosen = runtimes_for(artifact.format)
        else:
            chosen = [r for r in self.runtimes if artifact.format in get_runner(r).formats]
            chosen = chosen or [default_runtime_for(artifact.format)]
        return [*chosen, *(r for r in extra if r not in chosen)]

    def _accuracy(self, runtime: str, artifact: Artifact, state: PipelineState) -> float | None:
        data = state.data.get(self.eval)
        return None if data is None else evaluate_top1(runtime, artifact, *feeds_and_labels(data))


def _label(artifact: Artifact, stage: Path) -> str:
    if artifact.format is Format.EAGER:
        return "eager"
    return _relative(artifact.path, stage)


def _relative(path: Path, stage: Path) -> str:
    return path.relative_to(stage).as_posix()
