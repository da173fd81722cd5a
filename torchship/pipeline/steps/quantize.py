"""The quantize step: INT8 artifacts of an FP32 ONNX artifact, one subfolder each."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, replace

import numpy as np

from torchship.artifact import Artifact, Format
from torchship.calibration.ort_quantize import conv_heavy
from torchship.calibration.quantize import Mode, QuantizeOptions, QuantizeResult
from torchship.errors import ParityError
from torchship.exporter import check_parity
from torchship.loaded import LoadedModel
from torchship.pipeline.registry import step_function
from torchship.pipeline.step import CALIB, FP32, PipelineState, Step, StepResult, artifact_role
from torchship.runtimes.tolerance import tolerance_for

__all__ = ["QuantizeJob", "QuantizeStep"]

log = logging.getLogger(__name__)

#: eval images the INT8 file is compared with eager PyTorch on
_PARITY_SAMPLES = 32


@dataclass(frozen=True)
class QuantizeJob:
    """One INT8 artifact: its role is `<variant>/onnx`, its files go in `folder` of the bundle."""

    variant: str
    folder: str
    options: QuantizeOptions
    message: str
    #: dynamic INT8 leaves convolutions in FP32: worth it only on MatMul/Gemm-heavy models
    skip_conv_heavy: bool = False

    @property
    def role(self) -> str:
        return artifact_role(self.variant, Format.ONNX)


@dataclass(frozen=True)
class QuantizeStep(Step):
    """Quantize the `source` ONNX artifact once per job (static jobs calibrate on `calib`).

    With `eval` (a labelled data role) each artifact's accuracy on it is measured against its
    budget, summarised in its `details` ("accuracy", "calibration", "passed", "source") and the
    file must match eager `model` on the first eval images (int8 tolerance profile).
    """

    name = "quantize"
    writes = True

    jobs: tuple[QuantizeJob, ...]
    source: str = artifact_role(FP32, Format.ONNX)
    calib: str = CALIB
    eval: str | None = None
    model: str = FP32

    def requires(self) -> dict[str, str]:
        return {self.source: f'[{self.name}] needs "onnx" in [export] formats'}

    def provides(self) -> tuple[str, ...]:
        return tuple(job.role for job in self.jobs)

    def run(self, state: PipelineState) -> StepResult:
        onnx = state.artifacts[self.source]
        skip = any(job.skip_conv_heavy for job in self.jobs) and conv_heavy(onnx.path)
        made = {}
        for job in self.jobs:
            if job.skip_conv_heavy and skip:
                continue
            state.progress(job.message)
            made[job.role] = self._quantize(job, onnx, state)
        return StepResult(artifacts=made, origins=dict.fromkeys(made, self.source))

    def _quantize(self, job: QuantizeJob, onnx: Artifact, state: PipelineState) -> Artifact:
        quantize = step_function("quantize")
        calib = None if job.options.mode is Mode.DYNAMIC else state.data.get(self.calib)
        eval_data = state.data[self.eval] if self.eval else None
        result = quantize(
            onnx, state.stage / job.folder, calib=calib, eval_data=eval_data, options=job.options
        )
        if eval_data is None:
            return result.artifact
        artifact = _with_summary(result)
        model = state.models[self.model]
        _require_int8_parity(model, artifact, eval_data[model.inputs[0].name][:_PARITY_SAMPLES])
        return artifact


def _with_summary(result: QuantizeResult) -> Artifact:
    report: Mapping = result.report
    details = {
        **result.artifact.details,
        "accuracy": report["accuracy"],
        "calibration": report.get("calibration"),
        "passed": result.passed,
        #: the FP32 file it came from, relative to the INT8 file's parent folder
        "source": f"../{report['source']}",
    }
    return replace(result.artifact, details=details)


def _require_int8_parity(model: LoadedModel, artifact: Artifact, images: np.ndarray) -> None:
    """Parity vs eager on real eval images: random inputs fall outside the calibrated ranges,
    where INT8 saturates by design, so they say nothing about the artifact."""
    spec = model.inputs[0]
    probe = replace(
        model,
        inputs=(replace(spec, shape=images.shape, dynamic={}), *model.inputs[1:]),
        example={spec.name: images},
    )
    report = check_parity(probe, artifact, num_random=0, profile=tolerance_for("int8"))
    if not report.passed:
        raise ParityError(report.message())
