"""The export step: a model to each file format, each file checked against eager PyTorch."""

from __future__ import annotations

from dataclasses import dataclass

from torchship.artifact import FILE_FORMATS, Format
from torchship.exporter import ExportOptions
from torchship.exporter.checked import export_checked
from torchship.pipeline.step import FP32, PipelineState, Step, StepResult, artifact_role

__all__ = ["ExportStep"]


@dataclass(frozen=True)
class ExportStep(Step):
    """Export `model` into the bundle's top folder; its reference I/O goes beside the files."""

    name = "export"
    writes = True

    formats: tuple[str, ...] = FILE_FORMATS
    options: ExportOptions | None = None
    model: str = FP32
    #: the progress line (default: "exporting <formats>")
    message: str | None = None

    def requires(self) -> dict[str, str]:
        return {self.model: f"[export] needs the {self.model} model; load it first"}

    def provides(self) -> tuple[str, ...]:
        return tuple(artifact_role(self.model, Format.parse(name)) for name in self.formats)

    def run(self, state: PipelineState) -> StepResult:
        model = state.models[self.model]
        state.progress(self.message or "exporting " + ", ".join(self.formats))
        artifacts, reports = export_checked(
            model, state.stage, formats=self.formats, options=self.options,
            progress=state.progress,
        )  # fmt: skip
        parity = {name: report.to_dict() for name, report in reports.items()}
        roles = {artifact_role(self.model, a.format): a for a in artifacts}
        return StepResult(artifacts=roles, parity=parity, referenced=set(roles))
