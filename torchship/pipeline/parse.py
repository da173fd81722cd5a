"""Reading `pipeline.toml`: TOML to PipelineConfig, with errors naming the file, key and line."""

from __future__ import annotations

import dataclasses
import math
import re
import sys
import types
import typing
from pathlib import Path
from typing import Any

from torchship.artifact import Format, Precision
from torchship.errors import ConfigError
from torchship.pipeline.registry import step_function
from torchship.pipeline.schema import (
    BenchSection,
    EnginesSection,
    ExportSection,
    GatesSection,
    ModelSection,
    PipelineConfig,
    PruneSection,
    QuantizeSection,
    TuneSection,
)
from torchship.regression.stats import CompareConfig
from torchship.runtimes.base import get_runner

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10 needs the `tomli` backport
    import tomli as tomllib

__all__ = ["load_pipeline", "parse_pipeline"]


_SECTIONS: dict[str, type] = {
    "model": ModelSection,
    "export": ExportSection,
    "prune": PruneSection,
    "quantize": QuantizeSection,
    "engines": EnginesSection,
    "tune": TuneSection,
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
    """Validate pipeline TOML; relative paths in it resolve against `path`'s folder."""
    where = str(path or "<pipeline>")
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{where}: not valid TOML: {exc}") from None
    except RecursionError:  # tomllib recurses per nested array / inline table
        raise ConfigError(f"{where}: not valid TOML: arrays or tables nested too deeply") from None
    lines = _LineIndex(text, where)
    _check_keys(data, _TOP_KEYS, lines, table=None)
    name, version, output = _head(_table(data, "pipeline", lines), lines)
    if "model" not in data:
        raise ConfigError(f"{where}: missing the [model] table (its `source` is required)")
    sections = {
        name: _section(cls, _table(data, name, lines), lines, name)
        for name, cls in _SECTIONS.items()
        if name in data or name in ("export", "bench", "gates")
    }
    config = PipelineConfig(name=name, version=version, output=output, path=path, **sections)
    _validate(config, lines)
    return config


def _head(head: dict, lines: _LineIndex) -> tuple[str, str, str]:
    """[pipeline] name, version (they name the bundle folder) and output."""
    _check_keys(head, _PIPELINE_KEYS, lines, table="pipeline")
    name = _coerce(head.get("name"), str, lines.at("pipeline", "name"), required=True)
    version = _coerce(head.get("version"), str, lines.at("pipeline", "version"), required=True)
    for key, value in (("name", name), ("version", version)):
        if not _NAME.fullmatch(value):
            raise ConfigError(
                f"{lines.at('pipeline', key)}: {value!r} must be letters, digits, '.', '_', "
                "'+' or '-' (it names the bundle folder)"
            )
    output = _coerce(head.get("output", "dist"), str, lines.at("pipeline", "output"))
    return name, version, output


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
    """The checks the types cannot express, table by table, in file order."""
    _each(config.export.formats, Format.parse, lines.at("export", "formats"))
    _validate_bench(config.bench, lines)
    _validate_gates(config.gates, lines)
    if config.prune is not None:
        if not 0 < config.prune.ratio < 1:
            raise ConfigError(
                f"{lines.at('prune', 'ratio')}: must be in (0, 1), got {config.prune.ratio}"
            )
        _positive(lines.at("prune", "epochs"), config.prune.epochs)
    drop = config.quantize.max_drop if config.quantize is not None else None
    if drop is not None and not 0 <= drop <= 100:  # NaN too: up front, not after the export
        where = lines.at("quantize", "max_drop")
        raise ConfigError(f"{where}: must be 0..100 percentage points, got {drop}")
    if config.engines is not None:
        _each(config.engines.precisions, _precision, lines.at("engines", "precisions"))
    if config.tune is not None:
        _validate_tune(config, lines)
    for step in ("prune", "quantize", "engines"):
        if getattr(config, step) is not None:
            try:
                step_function(step)
            except ConfigError as exc:
                raise ConfigError(f"{lines.at(step)}: {exc}") from None


def _each(values: tuple[str, ...], check: Any, where: str) -> None:
    """`check` every array item; its ConfigError gains the key, line and index."""
    for index, value in enumerate(values):
        try:
            check(value)
        except ConfigError as exc:
            raise ConfigError(f"{where}[{index}]: {exc}") from None


def _precision(name: str) -> Precision:
    try:
        return Precision(name)
    except ValueError:
        raise ConfigError(f"unknown precision {name!r}; choose from fp32, fp16, int8") from None


def _validate_bench(bench: BenchSection, lines: _LineIndex) -> None:
    _each(bench.runtimes, get_runner, lines.at("bench", "runtimes"))
    _positive(lines.at("bench", "batches"), *bench.batches, strict=True)
    _positive(lines.at("bench", "min_time_s"), bench.min_time_s)
    _positive(lines.at("bench", "warmup"), bench.warmup)
    if bench.threads is not None:
        _positive(lines.at("bench", "threads"), bench.threads, strict=True)


def _validate_tune(config: PipelineConfig, lines: _LineIndex) -> None:
    """The search needs labelled eval data and calibration data for its INT8 candidates."""
    tune = config.tune
    if not 0 <= tune.max_drop <= 100:
        where = lines.at("tune", "max_drop")
        raise ConfigError(f"{where}: must be 0..100 percentage points, got {tune.max_drop}")
    if tune.time_budget_s is not None:
        _positive(lines.at("tune", "time_budget_s"), tune.time_budget_s, strict=True)
    if config.model.eval is None and config.model.source != "demo":
        raise ConfigError(f"{lines.at('tune')}: needs labelled eval data: set [model] eval")
    if config.quantize is None or config.quantize.calib is None:
        raise ConfigError(
            f"{lines.at('tune')}: needs calibration data for its INT8 candidates: set "
            "[quantize] calib"
        )


def _validate_gates(gates: GatesSection, lines: _LineIndex) -> None:
    for key in ("max_accuracy_drop", "max_p90_ms", "min_speedup", "threshold_pct"):
        value = getattr(gates, key)
        if value is not None:
            _positive(lines.at("gates", key), value)
    if gates.baseline is not None:
        try:
            CompareConfig(threshold_pct=gates.threshold_pct)
        except ConfigError as exc:
            raise ConfigError(f"{lines.at('gates', 'threshold_pct')}: {exc}") from None


def _positive(where: str, *values: float, strict: bool = False) -> None:
    for value in values:
        if not math.isfinite(value):
            raise ConfigError(f"{where}: must be a finite number, got {value}")
        if value < 0 or (strict and value == 0):
            bound = "> 0" if strict else ">= 0"
            raise ConfigError(f"{where}: must be {bound}, got {value}")
