"""Export steps (TorchScript, ONNX, torch.export), parity validation and reference I/O."""

from torchship.exporter.base import EXPORTERS, ExportOptions, export_model
from torchship.exporter.parity import check_parity, require_parity
from torchship.exporter.reference import load_reference, save_reference
from torchship.runtimes.compare import ParityReport
from torchship.runtimes.tolerance import TOLERANCES, ToleranceProfile

__all__ = [
    "EXPORTERS",
    "ExportOptions",
    "ParityReport",
    "TOLERANCES",
    "ToleranceProfile",
    "check_parity",
    "export_model",
    "load_reference",
    "require_parity",
    "save_reference",
]
