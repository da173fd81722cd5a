"""Release pipelines: the `pipeline.toml` schema, the steps and the bundle they write; the demo
is a built-in plan run by the same runner.

The public names load lazily (PEP 562): `torchship init` and config validation need only the
schema, the parser and the template, not torch, which the steps import.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "PipelineResult": "torchship.pipeline.results",
    "GateResult": "torchship.pipeline.results",
    "BundleRow": "torchship.pipeline.results",
    "ShipReport": "torchship.pipeline.results",
    "ShipRow": "torchship.pipeline.results",
    "require_pipeline": "torchship.pipeline.results",
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
    "Step": "torchship.pipeline.step",
    "StepResult": "torchship.pipeline.step",
    "StepContractError": "torchship.pipeline.step",
    "PipelineState": "torchship.pipeline.step",
    "Plan": "torchship.pipeline.plan",
    "run_plan": "torchship.pipeline.plan",
    "plan_for": "torchship.pipeline.bundle",
    "run_pipeline": "torchship.pipeline.bundle",
    "demo_plan": "torchship.pipeline.demo",
    "ship_demo": "torchship.pipeline.demo",
    "runtimes_for": "torchship.pipeline.steps.measure",
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
