"""Release pipelines: the `pipeline.toml` schema, the steps and the bundle they write; the demo
is a built-in pipeline.

The public names load lazily (PEP 562): `torchship init` and config validation need only the
schema, the parser and the template, not torch, which the steps import.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "GateResult": "torchship.pipeline.bundle",
    "PipelineResult": "torchship.pipeline.bundle",
    "require_pipeline": "torchship.pipeline.bundle",
    "run_pipeline": "torchship.pipeline.bundle",
    "ShipReport": "torchship.pipeline.demo",
    "ShipRow": "torchship.pipeline.demo",
    "runtimes_for": "torchship.pipeline.demo",
    "ship_demo": "torchship.pipeline.demo",
    "ModelSection": "torchship.pipeline.schema",
    "ExportSection": "torchship.pipeline.schema",
    "PruneSection": "torchship.pipeline.schema",
    "QuantizeSection": "torchship.pipeline.schema",
    "EnginesSection": "torchship.pipeline.schema",
    "BenchSection": "torchship.pipeline.schema",
    "GatesSection": "torchship.pipeline.schema",
    "PipelineConfig": "torchship.pipeline.schema",
    "load_pipeline": "torchship.pipeline.parse",
    "parse_pipeline": "torchship.pipeline.parse",
    "EXAMPLE_CONFIG": "torchship.pipeline.template",
    "STEPS": "torchship.pipeline.registry",
    "step_function": "torchship.pipeline.registry",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'torchship.pipeline' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
