"""The engines step: TensorRT engines when TensorRT and a GPU are here; nothing (logged) else."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from torchship.artifact import Format, Precision
from torchship.pipeline.registry import step_function
from torchship.pipeline.step import FP32, PipelineState, Step, StepResult, artifact_role
from torchship.runtimes.tensorrt.builder import EngineOptions
from torchship.runtimes.tensorrt.runner import TensorRTRunner

__all__ = ["EnginesStep"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EnginesStep(Step):
    """One engine per precision from `source`, and an INT8 one from `int8_source` (the
    `tensorrt`-preset Q/DQ ONNX) when given; each checked against its ONNX file on the GPU.
    An engine's role is `<precision>/tensorrt-engine`."""

    name = "engines"
    writes = True

    precisions: tuple[Precision, ...] = (Precision.FP32, Precision.FP16)
    source: str = artifact_role(FP32, Format.ONNX)
    int8_source: str | None = None
    folder: str = "engines"
    message: str = "TensorRT engines (when TensorRT and a GPU are here)"

    def requires(self) -> dict[str, str]:
        needs = {self.source: '[engines] needs "onnx" in [export] formats'}
        if self.int8_source is not None:
            needs[self.int8_source] = (
                '[engines] int8 builds from [quantize] presets = ["tensorrt"]; add it'
            )
        return needs

    def provides(self) -> tuple[str, ...]:
        return tuple(_role(precision) for precision, _ in self._jobs())

    def _jobs(self) -> list[tuple[Precision, str]]:
        jobs = [(precision, self.source) for precision in self.precisions]
        if self.int8_source is not None:
            jobs.append((Precision.INT8, self.int8_source))
        return jobs

    def run(self, state: PipelineState) -> StepResult:
        state.progress(self.message)
        reason = TensorRTRunner.unavailable_reason()
        if reason is not None:
            log.info("ship: no TensorRT engines (%s)", reason)
            return StepResult()
        build = step_function("engines")
        engines = {}
        for precision, role in self._jobs():
            source = state.artifacts[role]
            result = build(
                source.path, out=state.stage / self.folder, inputs=source.inputs,
                options=EngineOptions(precision=precision),
            )  # fmt: skip
            engines[_role(precision)] = result.artifact
        return StepResult(artifacts=engines)


def _role(precision: Precision) -> str:
    return artifact_role(precision.value, Format.TENSORRT_ENGINE)
