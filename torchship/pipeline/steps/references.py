"""The references step: reference outputs for every artifact that has none yet."""

from __future__ import annotations

from dataclasses import dataclass

from torchship.artifact import Format
from torchship.exporter.reference import save_own_references
from torchship.pipeline.step import PipelineState, Step, StepResult

__all__ = ["ReferencesStep"]


@dataclass(frozen=True)
class ReferencesStep(Step):
    """INT8 files and engines get reference outputs from their own runtime, on the inputs of
    the bundle's reference I/O, in their folders: `torchship verify` proves that a shipped
    file still computes what was shipped."""

    name = "references"
    writes = True

    def run(self, state: PipelineState) -> StepResult:
        missing = [
            role
            for role, artifact in state.artifacts.items()
            if role not in state.referenced and artifact.format is not Format.EAGER
        ]
        if missing:
            save_own_references([state.artifacts[role] for role in missing], state.stage)
        return StepResult(referenced=set(missing))
