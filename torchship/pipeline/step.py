"""The step contract: every pipeline step is a `Step` whose `run(state)` returns a StepResult.

`Step.__call__` checks the contract once, so each step stays small (the idea of onnx-ir's
`PassBase`): the roles the step requires are in the state, `run` returned a StepResult, the
result adds only roles the step declared and replaces none, and then it merges the result into
the state. Steps find each other's outputs by role (`fp32/onnx`, `int8/onnx`,
`pruned/int8/onnx`, `fp16/tensorrt-engine`), never by file or folder name.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Mapping
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

import numpy as np

from torchship.artifact import Artifact, Format
from torchship.data import LABELS_KEY
from torchship.errors import ConfigError
from torchship.loaded import LoadedModel
from torchship.pipeline.results import BundleRow, GateResult, Measurement, ShipRow
from torchship.runtimes.bench import BenchDocument

if TYPE_CHECKING:
    from torchship.tune import TuneReport

__all__ = [
    "CALIB",
    "EAGER",
    "EVAL",
    "FP32",
    "PRUNED",
    "REFERENCE",
    "TRAIN",
    "PipelineState",
    "Step",
    "StepContractError",
    "StepResult",
    "Data",
    "artifact_role",
    "feeds_and_labels",
]

#: model roles: the unpruned model (eager row, teacher), the model exported at FP32, a pruned copy
REFERENCE, FP32, PRUNED = "reference", "fp32", "pruned"
#: data roles: labelled evaluation set, labelled training set, calibration set (or its path)
EVAL, TRAIN, CALIB = "eval", "train", "calib"
#: the eager reference row's artifact
EAGER = "reference/eager"

#: a data set: arrays by input name (+ `labels`), or a path the step that uses it reads itself
Data = Mapping[str, np.ndarray] | Path


def artifact_role(variant: str, fmt: Format) -> str:
    """The role of the `fmt` artifact of `variant`: `fp32/onnx`, `pruned/int8/onnx`..."""
    return f"{variant}/{fmt.value}"


class StepContractError(RuntimeError):
    """A step broke the step contract: a bug in the step, not in the user's input."""


@dataclass(kw_only=True)
class StepResult:
    """What one step adds to the state; every field is optional."""

    #: new artifacts by role, in row order
    artifacts: dict[str, Artifact] = field(default_factory=dict)
    models: dict[str, LoadedModel] = field(default_factory=dict)
    data: dict[str, Data] = field(default_factory=dict)
    #: artifact role -> the role of the artifact it was made from (INT8 from FP32)
    origins: dict[str, str] = field(default_factory=dict)
    #: artifact roles whose reference I/O is now in the bundle
    referenced: set[str] = field(default_factory=set)
    #: parity reports by file name (the manifest's `metrics.parity`)
    parity: dict[str, dict] = field(default_factory=dict)
    pruning: dict | None = None
    baseline: BenchDocument | None = None
    measurements: tuple[Measurement, ...] = ()
    rows: tuple[BundleRow, ...] = ()
    table: tuple[ShipRow, ...] = ()
    gates: tuple[GateResult, ...] = ()
    #: the bench document, as written to bench.json
    bench: BenchDocument | None = None
    #: artifact role -> runtimes it is measured on beyond its format's own (the search's)
    measure_on: dict[str, tuple[str, ...]] = field(default_factory=dict)
    #: search candidate name -> why it was not built or tried here
    skipped: dict[str, str] = field(default_factory=dict)
    #: the deployment search over the measured rows: each candidate's outcome
    search: TuneReport | None = None
    #: the search's choice as the manifest and report.json hold it (`release_summary`)
    release: dict | None = None

    def roles(self) -> list[str]:
        return [*self.artifacts, *self.models, *self.data]


@dataclass(kw_only=True)
class PipelineState(StepResult):
    """The merge of every step's result so far, and where the run writes: `stage` is the
    staging folder once it exists."""

    bundle_dir: Path
    command: tuple[str, ...] | None = None
    progress: Callable[[str], None] = lambda message: None
    stage: Path | None = None

    def __contains__(self, role: object) -> bool:
        return role in self.artifacts or role in self.models or role in self.data

    def shipped(self) -> list[Artifact]:
        """The artifacts written to the bundle (all but the eager reference), in row order."""
        return [a for a in self.artifacts.values() if a.format is not Format.EAGER]

    def apply(self, result: StepResult) -> None:
        """Merge `result`: dicts and sets grow, the other fields are replaced when given."""
        for f in fields(StepResult):
            theirs = getattr(result, f.name)
            if f.default_factory is not MISSING:  # a dict or a set
                getattr(self, f.name).update(theirs)
            elif theirs is not None and theirs != ():
                setattr(self, f.name, theirs)


def feeds_and_labels(data: Mapping[str, np.ndarray]) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """A labelled data set split into model feeds and its labels."""
    feeds = {name: value for name, value in data.items() if name != LABELS_KEY}
    return feeds, data[LABELS_KEY]


class Step(abc.ABC):
    """One pipeline step. Subclasses are frozen dataclasses holding the step's settings."""

    #: the step's name in messages ("quantize" -> `[quantize]` in the error text)
    name: ClassVar[str]
    #: whether the step writes into the bundle (it then runs once the staging folder exists)
    writes: ClassVar[bool] = False

    def requires(self) -> Mapping[str, str]:
        """Roles the step needs -> what the user should change when one is missing."""
        return {}

    def provides(self) -> tuple[str, ...]:
        """Roles (artifacts, models, data) the step may add."""
        return ()

    @abc.abstractmethod
    def run(self, state: PipelineState) -> StepResult:
        """Do the work; return what it made. The state is read, not changed."""

    def __call__(self, state: PipelineState) -> StepResult:
        for role, fix in self.requires().items():
            if role not in state:
                raise ConfigError(fix)
        if self.writes and state.stage is None:
            raise StepContractError(
                f"step {self.name!r} writes into the bundle; it must run after the staging "
                "folder exists (in the plan's build steps)"
            )
        result = self.run(state)
        self._check(result, state)
        state.apply(result)
        return result

    def _check(self, result: object, state: PipelineState) -> None:
        if not isinstance(result, StepResult):
            raise StepContractError(
                f"step {self.name!r} returned {type(result).__name__}, expected a StepResult"
            )
        declared = self.provides()
        for role in result.roles():
            if role not in declared:
                valid = ", ".join(declared) or "none"
                raise StepContractError(
                    f"step {self.name!r} added role {role!r}, which it does not declare "
                    f"(declared: {valid})"
                )
            if role in state:
                raise StepContractError(f"step {self.name!r} replaced role {role!r}")
        wrong = [r for r, a in result.artifacts.items() if not isinstance(a, Artifact)]
        if wrong:
            raise StepContractError(f"step {self.name!r}: role {wrong[0]!r} is not an Artifact")
