"""torchship: take a trained PyTorch model to verified, benchmarked deployment artifacts."""

from torchship.api import ExportResult, bench, export
from torchship.artifact import Artifact, Format, Precision
from torchship.calibration import quantize
from torchship.errors import (
    BackendUnavailableError,
    CalibrationError,
    CheckFailedError,
    ConfigError,
    ExportError,
    ModelLoadError,
    ParityError,
    ToolchainError,
)
from torchship.exporter.prune_run import prune
from torchship.loaded import LoadedModel
from torchship.sources import load_model
from torchship.specs import InputSpec, parse_input_flag

__all__ = [
    "Artifact",
    "BackendUnavailableError",
    "CalibrationError",
    "CheckFailedError",
    "ConfigError",
    "ExportError",
    "ExportResult",
    "Format",
    "InputSpec",
    "LoadedModel",
    "ModelLoadError",
    "ParityError",
    "Precision",
    "ToolchainError",
    "bench",
    "export",
    "load_model",
    "parse_input_flag",
    "prune",
    "quantize",
]
