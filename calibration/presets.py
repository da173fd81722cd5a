"""Target presets for static INT8: frozen configs in a registry, plus `auto` from machine facts.

Why these settings (docs/design.md, measured with ORT 1.32, 2 threads): on x86 CPUs ORT's fast
integer kernels want U8 activations and S8 weights; U8S8 per-channel QDQ ran 2.7x faster than
FP32 on a ResNet-18-style CNN, while ORT's default S8S8 ran *slower* than FP32 (0.78x).
Without VNNI, `vpmaddubsw` adds pairs of u8*s8 products into an s16 that can saturate, so
`reduce_range` (7-bit weights) trades a little resolution for no overflow. TensorRT wants
symmetric S8S8 explicit Q/DQ.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any

from torchship.fingerprint import machine_fingerprint
from torchship.registry import Registry
from torchship.runtimes import available_runners

__all__ = ["QuantType8", "QuantPreset", "PRESETS", "get_preset", "auto_preset_name"]


class QuantType8(str, enum.Enum):
    U8 = "u8"
    S8 = "s8"

    def to_ort(self) -> Any:
        from onnxruntime.quantization import QuantType

        return QuantType.QUInt8 if self is QuantType8.U8 else QuantType.QInt8


@dataclass(frozen=True)
class QuantPreset:
    """How static INT8 is laid out for one target."""

    name: str
    activations: QuantType8
    weights: QuantType8
    per_channel: bool = True
    reduce_range: bool = False
    symmetric_activations: bool = False
    #: Write an ORT-format calibration table (for the ORT TensorRT EP) beside the model.
    calibration_table: bool = False
    #: Op types left unquantized (None: every op ORT can quantize).
    op_types: tuple[str, ...] | None = None
    extra_options: tuple[tuple[str, Any], ...] = field(default_factory=tuple)
    description: str = ""

    def ort_extra_options(self) -> dict[str, Any]:
        options: dict[str, Any] = {"WeightSymmetric": True}
        if self.symmetric_activations:
            options["ActivationSymmetric"] = True
            options["CalibTensorRangeSymmetric"] = True
        options.update(dict(self.extra_options))
        return options

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "activations": self.activations.value,
            "weights": self.weights.value,
            "per_channel": self.per_channel,
            "reduce_range": self.reduce_range,
            "symmetric_activations": self.symmetric_activations,
        }


PRESETS: Registry[QuantPreset] = Registry("quantization target")

_TRT_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul", "Add", "MaxPool", "AveragePool",
            "GlobalAveragePool", "Concat")  # fmt: skip

for _preset in (
    QuantPreset(
        "cpu-x86",
        QuantType8.U8,
        QuantType8.S8,
        reduce_range=True,
        description="x86 without VNNI: U8 activations, S8 per-channel weights, 7-bit range",
    ),
    QuantPreset(
        "cpu-x86-vnni",
        QuantType8.U8,
        QuantType8.S8,
        description="x86 with AVX-512 VNNI / AVX-VNNI / AMX: U8 activations, S8 per-channel",
    ),
    QuantPreset(
        "cpu-arm",
        QuantType8.U8,
        QuantType8.S8,
        description="ARM (NEON dot product): U8 activations, S8 per-channel weights",
    ),
    QuantPreset(
        "tensorrt",
        QuantType8.S8,
        QuantType8.S8,
        symmetric_activations=True,
        calibration_table=True,
        # TensorRT fuses Q/DQ around these; it rejects Q/DQ on ops it cannot run in INT8.
        op_types=_TRT_OPS,
        extra_options=(("AddQDQPairToWeight", False), ("DedicatedQDQPair", False)),
        description="TensorRT: symmetric S8S8 explicit Q/DQ, per-channel weights",
    ),
):
    PRESETS.register(_preset.name)(_preset)


def auto_preset_name(machine: dict, *, gpu_runtimes: bool = False) -> str:
    """The preset for this machine: TensorRT when it can run here, else by CPU arch and ISA."""
    if gpu_runtimes:
        return "tensorrt"
    arch = str(machine.get("arch", "")).lower()
    if arch in ("aarch64", "arm64") or arch.startswith("arm"):
        return "cpu-arm"
    isa = machine.get("isa") or {}
    has_vnni = machine.get("vnni") or any(
        isa.get(f) for f in ("avx512_vnni", "avx_vnni", "amx_int8")
    )
    return "cpu-x86-vnni" if has_vnni else "cpu-x86"


def get_preset(name: str | None) -> QuantPreset:
    """A preset by name; None or "auto" picks one from `doctor`'s CPU/GPU facts."""
    if name is None or name == "auto":
        trt = any(r in available_runners() for r in ("ort-trt", "tensorrt"))
        name = auto_preset_name(machine_fingerprint(), gpu_runtimes=trt)
    return PRESETS.get(name)
