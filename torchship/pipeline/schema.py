"""The `pipeline.toml` schema: one frozen dataclass per table (`[model]`, `[export]`, ...).

`torchship.pipeline.parse` reads and validates a file into a PipelineConfig.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

__all__ = [
    "ModelSection",
    "ExportSection",
    "PruneSection",
    "QuantizeSection",
    "EnginesSection",
    "TuneSection",
    "BenchSection",
    "GatesSection",
    "PipelineConfig",
]


@dataclass(frozen=True)
class ModelSection:
    source: str
    weights: str | None = None
    inputs: tuple[str, ...] = ()
    dynamic_batch: bool = False
    dynamic: tuple[str, ...] = ()
    #: labelled `.npz` (one array per input + `labels`); the demo uses its own test split
    eval: str | None = None
    #: hf: sources: the task (outputs) and a config class's fields (JSON text or a file)
    task: str | None = None
    config: str | None = None


@dataclass(frozen=True)
class ExportSection:
    formats: tuple[str, ...] = ("onnx", "torchscript", "exported-program")
    opset: int | None = None
    #: use the legacy (TorchScript-based) ONNX exporter: fast, deprecated in torch
    legacy_onnx: bool = False


@dataclass(frozen=True)
class PruneSection:
    ratio: float
    importance: str = "l2"
    #: labelled training data (.npz, arrays by input name + `labels`); enables distillation
    train: str | None = None
    epochs: int = 3


@dataclass(frozen=True)
class QuantizeSection:
    presets: tuple[str, ...] = ("auto",)
    calib: str | None = None
    method: str | None = None
    max_drop: float | None = None


@dataclass(frozen=True)
class EnginesSection:
    precisions: tuple[str, ...] = ("fp16",)


@dataclass(frozen=True)
class TuneSection:
    """The deployment search: every runtime x precision candidate is built, measured and held
    to `max_drop` points (top-1 vs eager on [model] eval); the fastest verified one is the
    release. INT8 candidates calibrate on [quantize] calib."""

    max_drop: float = 0.5
    #: seconds of building after which the remaining candidates are not tried
    time_budget_s: float | None = None


@dataclass(frozen=True)
class BenchSection:
    runtimes: tuple[str, ...] = ()
    batches: tuple[int, ...] = (1,)
    min_time_s: float = 0.5
    warmup: int = 10
    threads: int | None = None


@dataclass(frozen=True)
class GatesSection:
    """Percentages are points for accuracy (0.5 = half a point) and percent for the threshold."""

    max_accuracy_drop: float | None = None
    max_p90_ms: float | None = None
    min_speedup: float | None = None
    baseline: str | None = None
    baseline_dir: str | None = None
    threshold_pct: float = 5.0


@dataclass(frozen=True)
class PipelineConfig:
    name: str
    version: str
    model: ModelSection
    output: str = "dist"
    export: ExportSection = field(default_factory=ExportSection)
    prune: PruneSection | None = None
    quantize: QuantizeSection | None = None
    engines: EnginesSection | None = None
    tune: TuneSection | None = None
    bench: BenchSection = field(default_factory=BenchSection)
    gates: GatesSection = field(default_factory=GatesSection)
    #: where the file was read from; relative paths inside it resolve against its folder
    path: Path | None = None

    @property
    def bundle_dir(self) -> Path:
        return self._resolve(self.output) / f"{self.name}-{self.version}"

    def _resolve(self, text: str) -> Path:
        path = Path(text)
        return path if path.is_absolute() or self.path is None else self.path.parent / path

    def resolve(self, text: str | None) -> Path | None:
        """A path from the config, relative to the config file's folder."""
        return None if text is None else self._resolve(text)

    def to_dict(self) -> dict:
        data = dataclasses.asdict(self)
        data["path"] = str(self.path) if self.path else None
        return data
