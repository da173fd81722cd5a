"""Pruning steps: prune (and distill) a model, and save a pruned copy beside the FP32 files."""

from __future__ import annotations

from dataclasses import dataclass

from torchship.artifact import Format
from torchship.exporter.pruning.channels import PruneConfig
from torchship.exporter.pruning.distill import DistillConfig
from torchship.exporter.pruning.save import save_pruned
from torchship.pipeline.registry import step_function
from torchship.pipeline.step import (
    FP32,
    PRUNED,
    REFERENCE,
    TRAIN,
    PipelineState,
    Step,
    StepResult,
    artifact_role,
)

__all__ = ["PruneStep", "SavePrunedStep"]


@dataclass(frozen=True)
class PruneStep(Step):
    """Remove `ratio` of the channels of `source`; the pruned model fills role `into`.

    With training data in the state (role `train`) and `epochs` > 0 the pruned model is
    distilled from `source`. `eval` names labelled data measured before and after (the pruning
    report's accuracy); None leaves it out.
    """

    name = "prune"

    ratio: float | None = None
    importance: str | None = None
    epochs: int = 3
    seed: int = 0
    source: str = REFERENCE
    into: str = FP32
    train: str = TRAIN
    eval: str | None = None

    def requires(self) -> dict[str, str]:
        return {self.source: f"[prune] needs the {self.source} model; load it first"}

    def provides(self) -> tuple[str, ...]:
        return (self.into,)

    def run(self, state: PipelineState) -> StepResult:
        prune = step_function("prune")
        train = state.data.get(self.train)
        distill = train is not None and self.epochs > 0
        outcome = prune(
            state.models[self.source],
            config=PruneConfig(ratio=self.ratio, importance=self.importance),
            train=train,
            eval=state.data.get(self.eval) if self.eval else None,
            recovery=DistillConfig(epochs=self.epochs, seed=self.seed) if distill else None,
            progress=state.progress,
        )
        return StepResult(models={self.into: outcome.model}, pruning=outcome.to_dict())


@dataclass(frozen=True)
class SavePrunedStep(Step):
    """Save the pruned `model` in `folder` of the bundle: BN folded, checked against the pruned
    eager model, with safetensors weights, reference I/O and its own manifest."""

    name = "prune"
    writes = True

    model: str = PRUNED
    folder: str = "pruned"
    formats: tuple[str, ...] = ("onnx",)

    def requires(self) -> dict[str, str]:
        return {self.model: f"saving the {self.model} model needs a prune step before it"}

    def provides(self) -> tuple[str, ...]:
        return tuple(artifact_role(self.model, Format.parse(name)) for name in self.formats)

    def run(self, state: PipelineState) -> StepResult:
        state.progress(f"exporting the {self.model} model")
        saved = save_pruned(
            state.models[self.model],
            state.stage / self.folder,
            pruning=state.pruning["pruning"],
            formats=list(self.formats),
        )
        artifacts = {artifact_role(self.model, a.format): a for a in saved.artifacts}
        return StepResult(artifacts=artifacts, referenced=set(artifacts))
