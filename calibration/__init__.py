"""Calibration data readers, ORT calibrators, target presets, INT8/FP16 quantization."""

from torchship.calibration.accuracy import Accuracy
from torchship.calibration.calibrators import METHODS, compute_ranges
from torchship.calibration.inspect_int8 import OpCounts, count_ops
from torchship.calibration.presets import PRESETS, QuantPreset, auto_preset_name, get_preset
from torchship.calibration.quantize import Mode, QuantizeOptions, QuantizeResult, quantize
from torchship.data import Batch, DataSet, open_data

__all__ = [
    "Accuracy",
    "Batch",
    "DataSet",
    "METHODS",
    "Mode",
    "OpCounts",
    "PRESETS",
    "QuantPreset",
    "QuantizeOptions",
    "QuantizeResult",
    "auto_preset_name",
    "compute_ranges",
    "count_ops",
    "get_preset",
    "open_data",
    "quantize",
]
