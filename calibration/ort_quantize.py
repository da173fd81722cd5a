"""The ORT quantization calls: pre-processing, static QDQ from cached ranges, dynamic, FP16."""

from __future__ import annotations

import contextlib
import io
import logging
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import onnx

from torchship.calibration.presets import QuantPreset
from torchship.errors import ExportError, ModelLoadError
from torchship.files import scratch_cwd
from torchship.interrupts import reraise_interrupt

__all__ = [
    "QUANTIZABLE_WEIGHT_OPS",
    "DYNAMIC_OP_TYPES",
    "quiet_ort",
    "preprocess",
    "save_ranges",
    "quantize_static_qdq",
    "quantize_dynamic_int8",
    "convert_fp16",
    "weight_op_nodes",
    "conv_heavy",
    "quantized_op_types",
]

log = logging.getLogger(__name__)

QUANTIZABLE_WEIGHT_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")
#: Ops only a quantized graph has (QLinear* are matched by prefix).
QUANTIZED_OPS = frozenset(
    {
        "QuantizeLinear",
        "DequantizeLinear",
        "DynamicQuantizeLinear",
        "ConvInteger",
        "MatMulInteger",
        "MatMulIntegerToFloat",
        "DynamicQuantizeMatMul",
        "QGemm",
        "QAttention",
    }
)
#: Dynamic quantization touches only these: dynamic convs ran ~6x slower than FP32 (docs/design.md).
DYNAMIC_OP_TYPES = ("MatMul", "Gemm", "Attention")


@contextlib.contextmanager
def quiet_ort() -> Iterator[None]:
    """ORT's quantization tools print and warn on stdout/logging; keep the library silent.
    Their ERROR records too (tracebacks of steps that torchship retries or reports itself)."""
    logger = logging.getLogger()
    level = logger.level
    logger.setLevel(max(level, logging.CRITICAL))
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        logger.setLevel(level)


def preprocess(src: Path, dst: Path) -> str:
    """ORT's quant pre-processing (shape inference + graph optimization); returns what ran."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    attempts = (("full", {}), ("no symbolic shapes", {"skip_symbolic_shape": True}))
    src, dst = Path(src).absolute(), Path(dst).absolute()
    for label, kwargs in attempts:
        try:
            # ORT saves `sym_shape_infer_temp.onnx` (+ external data) into the working directory
            # when symbolic shape inference is incomplete (transformers): not into the user's
            # (docs/design.md, "Measured facts that shaped this")
            with quiet_ort(), scratch_cwd("torchship-ort-"):
                quant_pre_process(str(src), str(dst), **kwargs)
            return label
        except Exception as exc:  # ORT's helpers raise many kinds
            reraise_interrupt(exc)  # not a reason to try the next way
            log.info("quant pre-processing (%s) failed: %s", label, exc)
    onnx.save(onnx.load(str(src)), str(dst))
    log.warning("%s: ORT pre-processing failed; quantizing the graph as exported", src.name)
    return "none"


def save_ranges(ranges: Any, path: Path) -> Path:
    from onnxruntime.quantization.calibrate import save_tensors_data

    save_tensors_data(ranges, path)
    return path


def quantize_static_qdq(
    src: Path,
    dst: Path,
    *,
    preset: QuantPreset,
    method: Any,
    ranges_cache: Path,
    exclude: Sequence[str] = (),
) -> None:
    """QDQ INT8 of `src` with the preset's types, from ranges computed beforehand."""
    from onnxruntime.quantization import QuantFormat, quantize_static

    try:
        with quiet_ort():
            quantize_static(
                str(src),
                str(dst),
                None,
                quant_format=QuantFormat.QDQ,
                op_types_to_quantize=list(preset.op_types) if preset.op_types else None,
                per_channel=preset.per_channel,
                reduce_range=preset.reduce_range,
                activation_type=preset.activations.to_ort(),
                weight_type=preset.weights.to_ort(),
                nodes_to_exclude=list(exclude),
                calibrate_method=method,
                extra_options=preset.ort_extra_options(),
                calibration_cache_path=str(ranges_cache),
            )
    except Exception as exc:
        raise ExportError(f"{src.name}: ORT static quantization failed: {exc}") from exc


def quantize_dynamic_int8(src: Path, dst: Path, *, exclude: Sequence[str] = ()) -> None:
    """Dynamic INT8 (weights S8 per-channel, activations quantized at run time) of MatMul/Gemm."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    try:
        with quiet_ort():
            quantize_dynamic(
                str(src),
                str(dst),
                op_types_to_quantize=list(DYNAMIC_OP_TYPES),
                per_channel=False,
                weight_type=QuantType.QInt8,
                nodes_to_exclude=list(exclude),
            )
    except Exception as exc:
        raise ExportError(f"{src.name}: ORT dynamic quantization failed: {exc}") from exc


def convert_fp16(src: Path, dst: Path) -> None:
    """Float16 weights and compute, float32 inputs/outputs (Cast nodes at the boundary)."""
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = onnx.load(str(src))
    try:
        with quiet_ort():
            converted = convert_float_to_float16(
                model, keep_io_types=True, disable_shape_infer=False
            )
    except Exception as exc:
        raise ExportError(f"{src.name}: FP16 conversion failed: {exc}") from exc
    onnx.save(converted, str(dst))


def weight_op_nodes(path: Path) -> list[tuple[str, str]]:
    """(name, op type) of named nodes that quantization gives integer weights."""
    graph = onnx.load(str(path), load_external_data=False).graph
    return [
        (n.name, n.op_type) for n in graph.node if n.op_type in QUANTIZABLE_WEIGHT_OPS and n.name
    ]


def conv_heavy(path: Path) -> bool:
    """True when convolutions outnumber MatMul/Gemm: dynamic INT8 does not fit such models."""
    types = [op for _, op in weight_op_nodes(path)]
    convs = sum(op.startswith("Conv") for op in types)
    return convs > len(types) - convs


def quantized_op_types(path: Path) -> list[str]:
    """The quantized op types in `path`'s graph (Q/DQ, QLinear*, *Integer); empty for FP32."""
    try:
        graph = onnx.load(str(path), load_external_data=False).graph
    except Exception as exc:  # protobuf's DecodeError and friends
        raise ModelLoadError(f"{path}: not a readable ONNX model ({exc})") from None
    ops = {n.op_type for n in graph.node}
    return sorted(op for op in ops if op in QUANTIZED_OPS or op.startswith("QLinear"))
