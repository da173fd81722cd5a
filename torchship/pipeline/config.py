"""`pipeline.toml`: a release pipeline as frozen dataclasses, validated with errors naming the key
and its line. `torchship init` writes `EXAMPLE_CONFIG`; `torchship ship pipeline.toml` runs it
(torchship.pipeline.bundle.run_pipeline).
"""

from __future__ import annotations

import dataclasses
import importlib
import math
import re
import sys
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torchship.errors import ConfigError
from torchship.registry import Registry

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10 needs the `tomli` backport
    import tomli as tomllib

__all__ = [
    "EXAMPLE_CONFIG",
    "STEPS",
    "ModelSection",
    "ExportSection",
    "PruneSection",
    "QuantizeSection",
    "EnginesSection",
    "BenchSection",
    "GatesSection",
    "PipelineConfig",
    "load_pipeline",
    "parse_pipeline",
    "step_function",
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


#: step name -> (module, function) that implements it; looked up when a config uses the step.
STEPS: Registry[tuple[str, str]] = Registry("pipeline step")
STEPS.register("prune")(("torchship.exporter.pruning.run", "prune"))
STEPS.register("quantize")(("torchship.calibration.quantize", "quantize"))
STEPS.register("engines")(("torchship.exporter.engines", "ship_engines"))


def step_function(name: str) -> Any:
    """The function behind a step; ConfigError when this build does not have it."""
    module_name, attr = STEPS.get(name)
    try:
        module = importlib.import_module(module_name)
    except ImportError:
        module = None
    function = getattr(module, attr, None)
    if not callable(function):
        raise ConfigError(
            f"[{name}]: step {name!r} is not available in this build "
            f"({module_name}.{attr} is missing); remove the [{name}] table"
        )
    return function


_SECTIONS: dict[str, type] = {
    "model": ModelSection,
    "export": ExportSection,
    "prune": PruneSection,
    "quantize": QuantizeSection,
    "engines": EnginesSection,
    "bench": BenchSection,
    "gates": GatesSection,
}
_TOP_KEYS = ("pipeline", *_SECTIONS)
_PIPELINE_KEYS = ("name", "version", "output")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,99}$")


def load_pipeline(path: str | Path) -> PipelineConfig:
    """Read and validate a pipeline file; ConfigError names the file, key and line."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the pipeline file ({exc.strerror})") from None
    return parse_pipeline(text, path=path)


def parse_pipeline(text: str, *, path: Path | None = None) -> PipelineConfig:
    where = str(path or "<pipeline>")
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{where}: not valid TOML: {exc}") from None
    except RecursionError:  # tomllib recurses per nested array / inline table
        raise ConfigError(f"{where}: not valid TOML: arrays or tables nested too deeply") from None
    lines = _LineIndex(text, where)
    _check_keys(data, _TOP_KEYS, lines, table=None)
    head = _table(data, "pipeline", lines)
    _check_keys(head, _PIPELINE_KEYS, lines, table="pipeline")
    name = _coerce(head.get("name"), str, lines.at("pipeline", "name"), required=True)
    version = _coerce(head.get("version"), str, lines.at("pipeline", "version"), required=True)
    for key, value in (("name", name), ("version", version)):
        if not _NAME.fullmatch(value):
            raise ConfigError(
                f"{lines.at('pipeline', key)}: {value!r} must be letters, digits, '.', '_', "
                "'+' or '-' (it names the bundle folder)"
            )
    if "model" not in data:
        raise ConfigError(f"{where}: missing the [model] table (its `source` is required)")
    sections = {
        name: _section(cls, _table(data, name, lines), lines, name)
        for name, cls in _SECTIONS.items()
        if name in data or name in ("export", "bench", "gates")
    }
    output = _coerce(head.get("output", "dist"), str, lines.at("pipeline", "output"))
    config = PipelineConfig(name=name, version=version, output=output, path=path, **sections)
    _validate(config, lines)
    return config


class _LineIndex:
    """Where each `[table]` and `key =` sits in the file (tomllib does not say)."""

    def __init__(self, text: str, where: str) -> None:
        self.where = where
        self.lines: dict[tuple[str | None, str | None], int] = {}
        table: str | None = None
        for number, raw in enumerate(text.splitlines(), start=1):
            line = raw.strip()
            header = re.match(r"^\[\s*([A-Za-z0-9_.-]+)\s*\]", line)
            if header:
                table = header.group(1)
                self.lines.setdefault((table, None), number)
                continue
            key = re.match(r"^([A-Za-z0-9_-]+)\s*=", line)
            if key:
                self.lines.setdefault((table, key.group(1)), number)

    def at(self, table: str | None, key: str | None = None) -> str:
        number = self.lines.get((table, key)) or self.lines.get((table, None))
        name = f"[{table}] {key}" if table and key else f"[{table}]" if table else str(key)
        return f"{self.where}:{number}: {name}" if number else f"{self.where}: {name}"


def _table(data: dict, name: str, lines: _LineIndex) -> dict:
    value = data.get(name, {})
    if not isinstance(value, dict):
        raise ConfigError(f"{lines.at(None, name)}: expected a table [{name}], got a value")
    return value


def _check_keys(data: dict, valid: tuple[str, ...], lines: _LineIndex, *, table: str | None):
    for key in data:
        if key not in valid:
            raise ConfigError(
                f"{lines.at(table, key)}: unknown key {key!r}; valid: {', '.join(valid)}"
            )


def _section(cls: type, data: dict, lines: _LineIndex, table: str) -> Any:
    hints = typing.get_type_hints(cls)
    names = tuple(f.name for f in dataclasses.fields(cls))
    _check_keys(data, names, lines, table=table)
    values = {}
    for f in dataclasses.fields(cls):
        required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        if f.name in data or required:
            values[f.name] = _coerce(
                data.get(f.name), hints[f.name], lines.at(table, f.name), required=required
            )
    return cls(**values)


def _coerce(value: Any, hint: Any, where: str, *, required: bool = False) -> Any:
    """Check `value` against a field's type hint; tuples come from TOML arrays."""
    if value is None:
        if required:
            raise ConfigError(f"{where}: is required")
        return None
    args = typing.get_args(hint)
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        return _coerce(value, next(a for a in args if a is not type(None)), where)
    if typing.get_origin(hint) is tuple:
        if not isinstance(value, list):
            raise ConfigError(f"{where}: expected an array, got {_kind(value)} {value!r}")
        return tuple(_coerce(v, args[0], f"{where}[{i}]") for i, v in enumerate(value))
    ok = (
        isinstance(value, float | int) and not isinstance(value, bool)
        if hint is float
        else isinstance(value, hint) and not (hint is int and isinstance(value, bool))
    )
    if not ok:
        raise ConfigError(f"{where}: expected {hint.__name__}, got {_kind(value)} {value!r}")
    return float(value) if hint is float else value


def _kind(value: Any) -> str:
    return {bool: "boolean", str: "string", int: "integer", float: "float", list: "array"}.get(
        type(value), type(value).__name__
    )


def _validate(config: PipelineConfig, lines: _LineIndex) -> None:
    from torchship.artifact import Format
    from torchship.runtimes.base import get_runner

    for index, name in enumerate(config.export.formats):
        try:
            Format.parse(name)
        except ConfigError as exc:
            raise ConfigError(f"{lines.at('export', 'formats')}[{index}]: {exc}") from None
    for index, name in enumerate(config.bench.runtimes):
        try:
            get_runner(name)
        except ConfigError as exc:
            raise ConfigError(f"{lines.at('bench', 'runtimes')}[{index}]: {exc}") from None
    _positive(lines.at("bench", "batches"), *config.bench.batches, strict=True)
    _positive(lines.at("bench", "min_time_s"), config.bench.min_time_s)
    _positive(lines.at("bench", "warmup"), config.bench.warmup)
    if config.bench.threads is not None:
        _positive(lines.at("bench", "threads"), config.bench.threads, strict=True)
    gates = config.gates
    for key in ("max_accuracy_drop", "max_p90_ms", "min_speedup", "threshold_pct"):
        value = getattr(gates, key)
        if value is not None:
            _positive(lines.at("gates", key), value)
    if gates.baseline is not None:
        from torchship.regression.stats import CompareConfig

        try:
            CompareConfig(threshold_pct=gates.threshold_pct)
        except ConfigError as exc:
            raise ConfigError(f"{lines.at('gates', 'threshold_pct')}: {exc}") from None
    drop = config.quantize.max_drop if config.quantize is not None else None
    if drop is not None and not 0 <= drop <= 100:  # NaN too: up front, not after the export
        where = lines.at("quantize", "max_drop")
        raise ConfigError(f"{where}: must be 0..100 percentage points, got {drop}")
    if config.prune is not None and not 0 < config.prune.ratio < 1:
        raise ConfigError(
            f"{lines.at('prune', 'ratio')}: must be in (0, 1), got {config.prune.ratio}"
        )
    if config.prune is not None:
        _positive(lines.at("prune", "epochs"), config.prune.epochs)
    if config.engines is not None:
        from torchship.artifact import Precision

        for index, name in enumerate(config.engines.precisions):
            try:
                Precision(name)
            except ValueError:
                raise ConfigError(
                    f"{lines.at('engines', 'precisions')}[{index}]: unknown precision {name!r}; "
                    "choose from fp32, fp16, int8"
                ) from None
    for step in ("prune", "quantize", "engines"):
        if getattr(config, step) is not None:
            try:
                step_function(step)
            except ConfigError as exc:
                raise ConfigError(f"{lines.at(step)}: {exc}") from None


def _positive(where: str, *values: float, strict: bool = False) -> None:
    for value in values:
        if not math.isfinite(value):
            raise ConfigError(f"{where}: must be a finite number, got {value}")
        if value < 0 or (strict and value == 0):
            bound = "> 0" if strict else ">= 0"
            raise ConfigError(f"{where}: must be {bound}, got {value}")


EXAMPLE_CONFIG = """\
# torchship release pipeline. Run it with `torchship ship pipeline.toml`.
# The bundle lands in <output>/<name>-<version>/ (written atomically; a failed gate still
# writes it, marked failed, and the command exits 1). Relative paths are relative to this file.

[pipeline]
name = "demo"
version = "0.1.0"
output = "dist"

[model]
# demo | pkg.module:factory | path/to/file.py:factory | model.pt2 | model.ts
source = "demo"
# weights = "weights.safetensors"        # state_dict for a factory source
# inputs = ["image:8x1x28x28"]           # trtexec-style NAME:SHAPE[:DTYPE]
# dynamic_batch = true                   # axis 0 of every input is dynamic ('batch')
# eval = "eval.npz"                      # labelled data (arrays by input name + `labels`)

[export]
formats = ["onnx", "torchscript", "exported-program"]
# opset = 18
# legacy_onnx = true                     # the older, faster TorchScript-based ONNX exporter

# [prune]                                # structured channel pruning before export
# ratio = 0.3
# importance = "l2"                      # l1 | l2 | taylor (needs train)
# train = "train.npz"                    # labelled data: distill from the unpruned model
# epochs = 3

# [quantize]                             # INT8 presets for the ONNX artifact
# presets = ["auto"]
# calib = "calib.npz"

# [engines]                              # TensorRT engines (skipped, logged, without a GPU)
# precisions = ["fp16"]                  # int8 builds from the "tensorrt" quantize preset

[bench]
runtimes = []                            # empty: each artifact's own runtime
batches = [8]
min_time_s = 0.5
# threads = 2

[gates]
max_accuracy_drop = 0.5                  # percentage points below eager
# max_p90_ms = 50.0                      # every artifact, every batch
# min_speedup = 1.0                      # best artifact vs eager, at the first batch
# baseline = "main"                      # no regression vs a stored baseline
# threshold_pct = 5
"""
