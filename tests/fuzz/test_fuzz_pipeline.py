"""Fuzz `pipeline.toml` (torchship.pipeline.parse_pipeline): random keys, types, nesting
and huge values in the real tables, and text that is barely TOML at all."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import math
from pathlib import Path

from fuzzing import fuzz_settings
from hypothesis import given
from hypothesis import strategies as st

from torchship.pipeline.parse import parse_pipeline
from torchship.pipeline.schema import PipelineConfig

_FIELDS = {
    "pipeline": ["name", "version", "output"],
    "model": ["source", "weights", "inputs", "dynamic_batch", "dynamic", "eval"],
    "export": ["formats", "opset", "legacy_onnx"],
    "prune": ["ratio", "importance", "train", "epochs"],
    "quantize": ["presets", "calib", "method", "max_drop"],
    "engines": ["precisions"],
    "bench": ["runtimes", "batches", "min_time_s", "warmup", "threads"],
    "gates": ["max_accuracy_drop", "max_p90_ms", "min_speedup", "baseline", "baseline_dir",
              "threshold_pct"],
}  # fmt: skip
_WORDS = ["demo", "onnx", "torchscript", "exported-program", "ort-cpu", "fp16", "int8", "auto",
          "l2", "1.0", "dist", "../../etc", "a" * 300, "x:y", "image:8x1x28x28", ""]  # fmt: skip

_scalars = st.one_of(
    st.integers(-(2**63), 2**63 - 1),
    st.sampled_from([0, 1, -1, 8, 2**31, 2**62]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.booleans(),
    st.sampled_from(_WORDS),
    st.text(max_size=20),
    st.integers(0, 20_000).map(lambda n: "9" * n),  # huge values as text
    st.datetimes(timezones=st.just(dt.timezone.utc)),
    st.dates(),
)
_values = st.recursive(
    _scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.sampled_from(["a", "name"]), inner)
    ),
    max_leaves=12,
)


_BASE = {
    "pipeline": {"name": "demo", "version": "1.0", "output": "dist"},
    "model": {"source": "demo", "inputs": ["image:8x1x28x28"], "dynamic_batch": True},
    "export": {"formats": ["onnx", "torchscript"], "opset": 18},
    "prune": {"ratio": 0.3, "importance": "l2", "epochs": 3},
    "quantize": {"presets": ["auto"], "method": "minmax", "max_drop": 0.5},
    "engines": {"precisions": ["fp16"]},
    "bench": {"runtimes": ["ort-cpu"], "batches": [1, 8], "min_time_s": 0.5, "warmup": 10},
    "gates": {"max_accuracy_drop": 0.5, "max_p90_ms": 50.0, "min_speedup": 1.0},
}


@st.composite
def documents(draw) -> dict:
    """A valid pipeline with a few fields set to anything, removed, added or replaced."""
    tables = draw(st.lists(st.sampled_from(list(_BASE)), unique=True, min_size=0, max_size=8))
    doc = {table: dict(_BASE[table]) for table in ["pipeline", "model", *tables]}
    for _ in range(draw(st.integers(1, 4))):
        table = draw(st.sampled_from([*_FIELDS, "extra"]))
        action = draw(st.sampled_from(["set", "set", "set", "delete", "scalar"]))
        if action == "scalar":
            doc[table] = draw(_scalars)
            continue
        body = doc.setdefault(table, {}) if isinstance(doc.get(table, {}), dict) else {}
        key = draw(st.sampled_from([*_FIELDS.get(table, []), "unknown"]))
        if action == "delete":
            body.pop(key, None)
        else:
            body[key] = draw(_values)
    return doc


def _key(key: str) -> str:
    return json.dumps(key)


def _value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        return ("inf" if value > 0 else "-inf") if math.isinf(value) else repr(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, dt.date):
        return value.isoformat()
    if isinstance(value, str):
        return json.dumps(value)  # JSON string escapes are TOML basic-string escapes
    if isinstance(value, list):
        return "[" + ", ".join(_value(v) for v in value) + "]"
    return "{" + ", ".join(f"{_key(k)} = {_value(v)}" for k, v in value.items()) + "}"


def _toml(doc: dict) -> str:
    lines = [f"{_key(k)} = {_value(v)}" for k, v in doc.items() if not isinstance(v, dict)]
    for table, body in doc.items():
        if isinstance(body, dict):
            lines.append(f"[{table}]")
            lines += [f"{_key(k)} = {_value(v)}" for k, v in body.items()]
    return "\n".join(lines) + "\n"


_texts = st.one_of(
    st.text(max_size=200),
    st.lists(st.sampled_from(["[pipeline]", "[model]", 'name = "demo"', "version = 1",
                              "source = 'demo'", "[[model]]", "batches = [", "]", "{", "=", "\n",
                              "a.b.c = 1", "[bench]", "batches = [8]", '"""', "#"]), max_size=20)
    .map("\n".join),
    st.integers(1, 5000).map(lambda n: "a = " + "[" * n + "]" * n),  # deep nesting
    st.integers(1, 5000).map(lambda n: "a = " + "{b = " * n + "1" + "}" * n),
)  # fmt: skip


def _finite(value) -> bool:
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, tuple):
        return all(_finite(v) for v in value)
    return True


def _check_config(config: PipelineConfig) -> None:
    """What a config that parsed promises: numbers the steps can use."""
    for section in (config.export, config.prune, config.quantize, config.bench, config.gates):
        if section is None:
            continue
        for f in dataclasses.fields(section):
            value = getattr(section, f.name)
            assert _finite(value), f"[{type(section).__name__}] {f.name} = {value!r} was accepted"
    assert config.bundle_dir.name == f"{config.name}-{config.version}"


@fuzz_settings(400)
@given(documents())
def test_any_pipeline_document_parses_or_fails_in_one_line(expect_clean, doc):
    config = expect_clean(parse_pipeline, _toml(doc), path=Path("/fuzz/pipeline.toml"))
    if config is not None:
        _check_config(config)


@fuzz_settings(300)
@given(_texts)
def test_any_text_parses_or_fails_in_one_line(expect_clean, text):
    expect_clean(parse_pipeline, text, path=Path("/fuzz/pipeline.toml"))


_EDGE_VALUES = [math.nan, math.inf, -math.inf, -1.0, -1, 0, 0.0, 1e308, 2**63 - 1]
_EDGES = st.sampled_from(_EDGE_VALUES)
_EVERY_FIELD = [(table, key) for table, keys in _FIELDS.items() for key in keys]


@fuzz_settings(400)
@given(st.sampled_from(_EVERY_FIELD), st.one_of(_EDGES, _scalars, _values))
def test_each_field_with_any_value_parses_or_fails_in_one_line(expect_clean, field, value):
    table, key = field
    doc = {name: dict(body) for name, body in _BASE.items()}
    doc[table][key] = value
    config = expect_clean(parse_pipeline, _toml(doc), path=Path("/fuzz/pipeline.toml"))
    if config is not None:
        _check_config(config)


def test_each_field_with_each_edge_value(expect_clean):
    """Every field x every edge value, exhaustively (the random search above samples them)."""
    accepted = []
    for table, key in _EVERY_FIELD:
        for value in [*_EDGE_VALUES, "", [], {"a": 1}, "9" * 5000]:
            doc = {name: dict(body) for name, body in _BASE.items()}
            doc[table][key] = value
            config = expect_clean(parse_pipeline, _toml(doc), path=Path("/fuzz/pipeline.toml"))
            try:
                config is None or _check_config(config)
            except AssertionError as exc:
                accepted.append(str(exc))
    assert not accepted, accepted
