"""The optional steps a `pipeline.toml` may use, by table name, and the library function behind
each; a build without one turns its table into a ConfigError."""

from __future__ import annotations

import importlib
from typing import Any

from torchship.errors import ConfigError
from torchship.registry import Registry

__all__ = ["STEPS", "step_function"]


#: step name -> (module, function) that implements it; looked up when a config uses the step.
STEPS: Registry[tuple[str, str]] = Registry("pipeline step")
STEPS.register("prune")(("torchship.exporter.pruning.run", "prune"))
STEPS.register("quantize")(("torchship.calibration.quantize", "quantize"))
STEPS.register("engines")(("torchship.exporter.engines", "build_engine_file"))


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
