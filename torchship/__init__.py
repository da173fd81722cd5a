"""torchship: take a trained PyTorch model to verified, benchmarked deployment artifacts.

The public names load lazily (PEP 562), so `import torchship` (and the pytest plugin, which
every pytest run in an environment with torchship imports) does not pull in torch until used.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "ExportResult": "torchship.api",
    "bench": "torchship.api",
    "export": "torchship.api",
    "Artifact": "torchship.artifact",
    "Format": "torchship.artifact",
    "Precision": "torchship.artifact",
    "quantize": "torchship.calibration",
    "BackendUnavailableError": "torchship.errors",
    "CalibrationError": "torchship.errors",
    "CheckFailedError": "torchship.errors",
    "ConfigError": "torchship.errors",
    "ExportError": "torchship.errors",
    "ModelLoadError": "torchship.errors",
    "ParityError": "torchship.errors",
    "ToolchainError": "torchship.errors",
    "prune": "torchship.exporter.pruning.run",
    "LoadedModel": "torchship.loaded",
    "load_model": "torchship.sources",
    "InputSpec": "torchship.specs",
    "parse_input_flag": "torchship.specs",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'torchship' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
