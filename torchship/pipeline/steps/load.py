"""The load step: the baseline, the model and the data sets a plan needs, before any work."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from torchship.data import LABELS_KEY, load_arrays
from torchship.errors import CalibrationError
from torchship.loaded import LoadedModel
from torchship.models import demo_dataset
from torchship.pipeline.step import EAGER, FP32, REFERENCE, PipelineState, Step, StepResult
from torchship.regression.baselines import load_baseline
from torchship.sources import load_model
from torchship.specs import InputSpec

__all__ = ["BaselineRef", "DataFile", "DataPath", "DataSource", "DemoSplit", "LoadStep"]


@dataclass(frozen=True)
class DemoSplit:
    """A split of the embedded demo's data: its first `samples` images, and their labels."""

    split: str
    samples: int | None = None
    labels: bool = True

    def load(self, model: LoadedModel) -> dict[str, np.ndarray]:
        images, labels = demo_dataset(self.split)
        arrays = {model.inputs[0].name: images[: self.samples]}
        if self.labels:
            arrays[LABELS_KEY] = labels[: self.samples]
        return arrays


@dataclass(frozen=True)
class DataFile:
    """A data file (any source `torchship.data` reads), all in memory, by input name."""

    path: Path
    #: the configuration key it came from, for messages ("[model] eval")
    what: str
    labelled: bool = False

    def load(self, model: LoadedModel) -> dict[str, np.ndarray]:
        arrays = load_arrays(self.path, inputs=model.inputs, what=self.what)
        if self.labelled and LABELS_KEY not in arrays:
            raise CalibrationError(f"{self.what}: {self.path} has no `{LABELS_KEY}` array")
        return arrays


@dataclass(frozen=True)
class DataPath:
    """A path handed on unread: the step that uses it reads it (quantize samples calib data)."""

    path: Path

    def load(self, model: LoadedModel) -> Path:
        return self.path


DataSource = DemoSplit | DataFile | DataPath


@dataclass(frozen=True)
class BaselineRef:
    """A stored baseline by name (or a bench JSON path), looked up under `root`."""

    name: str
    root: Path | None = None


@dataclass(frozen=True)
class LoadStep(Step):
    """Load the model from `source`; it fills `roles` and its eager form is the reference row."""

    name = "load"

    source: str
    weights: Path | None = None
    inputs: tuple[InputSpec, ...] = ()
    #: model roles the loaded model fills (a prune step may fill `fp32` instead)
    roles: tuple[str, ...] = (REFERENCE, FP32)
    data: Mapping[str, DataSource] = field(default_factory=dict)
    baseline: BaselineRef | None = None
    #: hf: sources only (torchship.hf_source)
    task: str | None = None
    config: str | None = None

    def provides(self) -> tuple[str, ...]:
        return (EAGER, *self.roles, *self.data)

    def run(self, state: PipelineState) -> StepResult:
        # the baseline first: a missing one stops the run before any work
        baseline = None
        if self.baseline is not None:
            baseline = load_baseline(self.baseline.name, root=self.baseline.root)
        model = load_model(
            self.source,
            inputs=list(self.inputs) or None,
            weights=self.weights,
            task=self.task,
            config=self.config,
        )
        return StepResult(
            artifacts={EAGER: model.eager()},
            models=dict.fromkeys(self.roles, model),
            data={role: source.load(model) for role, source in self.data.items()},
            baseline=baseline,
        )
