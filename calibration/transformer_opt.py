"""ONNX Runtime's transformer optimizer ahead of INT8, for encoder graphs.

Fusing Attention, SkipLayerNormalization, BiasGelu and EmbedLayerNormalization before quantizing
halves the FP32 time of a BERT-class encoder and lets dynamic INT8 quantize the fused Attention's
packed QKV weights (QAttention). ORT fails to fuse Attention when it cannot read the head count
from a graph with dynamic shapes, so torchship reads it from the graph itself: the QK scale
constant gives the head size and the LayerNorm width gives the hidden size. The optimized graph
is checked against the source on random feeds before it is used; a graph where nothing fuses,
or that drifts, is skipped with a reason.
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from torchship.calibration.ort_quantize import quiet_ort
from torchship.files import scratch_cwd
from torchship.interrupts import reraise_interrupt

__all__ = ["EncoderShape", "OptimizeReport", "encoder_shape", "optimize_encoder"]

log = logging.getLogger(__name__)

#: Fused op types worth reporting (ORT's statistics list more, mostly for decoders and GPUs).
FUSED_OPS = ("Attention", "MultiHeadAttention", "SkipLayerNormalization", "BiasGelu", "Gelu",
             "FastGelu", "EmbedLayerNormalization", "LayerNormalization")  # fmt: skip
#: The optimized FP32 graph must match the source this closely (cosine) to be used.
MIN_COSINE = 0.9999


@dataclass(frozen=True)
class EncoderShape:
    """What the optimizer needs to know about an encoder; 0 means "let ORT detect it"."""

    num_heads: int = 0
    hidden_size: int = 0


@dataclass(frozen=True)
class OptimizeReport:
    """What the transformer optimizer did: `applied` False comes with the reason."""

    applied: bool
    reason: str = ""
    fusions: dict[str, int] = field(default_factory=dict)
    num_heads: int = 0
    hidden_size: int = 0
    notes: tuple[str, ...] = ()

    def to_dict(self) -> dict:
        return {
            "applied": self.applied,
            "reason": self.reason,
            "fusions": dict(self.fusions),
            "num_heads": self.num_heads,
            "hidden_size": self.hidden_size,
            "notes": list(self.notes),
        }


def encoder_shape(model: onnx.ModelProto) -> EncoderShape | None:
    """The encoder's head count and width, or None when the graph is not an encoder
    (no Softmax fed by a scaled QK MatMul, no LayerNorm, fewer than 4 weight MatMuls)."""
    graph = model.graph
    ops = Counter(n.op_type for n in graph.node)
    weights = {t.name for t in graph.initializer}
    weight_matmuls = sum(
        n.op_type in ("MatMul", "Gemm") and any(i in weights for i in n.input) for n in graph.node
    )
    has_norm = ops["LayerNormalization"] or ops["SkipLayerNormalization"]
    if not ops["Softmax"] or not has_norm or weight_matmuls < 4:
        return None
    head_dim = _head_dim(graph)
    hidden = _hidden_size(graph)
    if head_dim and hidden and hidden % head_dim == 0:
        return EncoderShape(num_heads=hidden // head_dim, hidden_size=hidden)
    return EncoderShape()


def optimize_encoder(src: Path, dst: Path, *, attention: bool = True) -> OptimizeReport:
    """Run ORT's BERT optimizer on `src` into `dst` when `src` is an encoder and something
    fuses; `attention=False` keeps Q/K/V as MatMuls (static QDQ cannot quantize Attention)."""
    model = onnx.load(str(src))
    shape = encoder_shape(model)
    if shape is None:
        return OptimizeReport(False, "not an encoder graph (no attention Softmax + LayerNorm)")
    try:
        fusions, optimized = _run_optimizer(src, shape, attention=attention)
    except Exception as exc:  # ORT's fusion code raises many kinds
        reraise_interrupt(exc)
        return OptimizeReport(False, f"ORT's transformer optimizer failed: {exc}")
    fired = {k: v for k, v in fusions.items() if v and k in FUSED_OPS}
    base = dict(num_heads=shape.num_heads, hidden_size=shape.hidden_size, fusions=fired)
    if not any(k != "LayerNormalization" for k in fired):
        return OptimizeReport(False, "nothing fused (no pattern ORT's optimizer knows)", **base)
    onnx.save(optimized, str(dst))
    cosine = _min_cosine(src, dst, model)
    if cosine < MIN_COSINE:
        dst.unlink()
        return OptimizeReport(
            False, f"optimized graph drifted from the source (min cosine {cosine:.6f})", **base
        )
    notes = () if not attention or fired.get("Attention") else (_no_attention_note(model),)
    return OptimizeReport(True, **base, notes=notes)


def _run_optimizer(src: Path, shape: EncoderShape, *, attention: bool):
    from onnxruntime.transformers.fusion_options import FusionOptions
    from onnxruntime.transformers.optimizer import optimize_model

    source = str(Path(src).absolute())  # before the working directory changes
    options = FusionOptions("bert")
    options.enable_attention = attention
    # ORT runs symbolic shape inference and may save temp files into the working directory
    # (docs/design.md, "Measured facts that shaped this").
    with quiet_ort(), scratch_cwd("torchship-ort-opt-"):
        optimizer = optimize_model(
            source,
            model_type="bert",
            num_heads=shape.num_heads,
            hidden_size=shape.hidden_size,
            optimization_options=options,
            opt_level=0,  # graph fusions only: ORT's session optimizations run at load anyway
        )
        optimizer.topological_sort()
        model = optimizer.model
    if not any(o.domain == "com.microsoft" for o in model.opset_import):
        model.opset_import.append(onnx.helper.make_opsetid("com.microsoft", 1))  # fused ops
    _type_fused_outputs(model)
    return optimizer.get_fused_operator_statistics(), model


def _type_fused_outputs(model: onnx.ModelProto) -> None:
    """Declare float outputs of the fused contrib ops: ONNX type inference does not know
    them, and ORT's static quantizer leaves tensors of unknown type unquantized."""
    typed = {v.name for v in (*model.graph.value_info, *model.graph.output, *model.graph.input)}
    float_ops = {"SkipLayerNormalization", "BiasGelu", "FastGelu", "Gelu", "Attention",
                 "MultiHeadAttention", "LayerNormalization"}  # fmt: skip
    for node in model.graph.node:
        if node.op_type not in float_ops and node.op_type != "EmbedLayerNormalization":
            continue
        outputs = node.output[:1] if node.op_type == "EmbedLayerNormalization" else node.output
        for name in outputs:
            if name and name not in typed:
                model.graph.value_info.append(
                    onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None)
                )


def _no_attention_note(model: onnx.ModelProto) -> str:
    where = Counter(n.op_type for n in model.graph.node)
    cause = "an SDPA-style mask (IsNaN/Where)" if where["IsNaN"] else "its mask/QKV pattern"
    return (
        f"Attention did not fuse ({cause}): export the model with transformers' "
        "attn_implementation='eager' and `--legacy-onnx` for the fused QAttention path"
    )


def _head_dim(graph: onnx.GraphProto) -> int:
    """Head size from the scale applied to Q·Kᵀ before Softmax (1/sqrt(d) or sqrt(d))."""
    consts = _constants(graph)
    producers = {o: n for n in graph.node for o in n.output}
    for softmax in (n for n in graph.node if n.op_type == "Softmax"):
        node = producers.get(softmax.input[0])
        for _ in range(3):  # Softmax <- Add(mask) <- Mul/Div(scale) <- MatMul
            if node is None:
                break
            if node.op_type in ("Mul", "Div"):
                scale = next((consts[i] for i in node.input if i in consts), None)
                if scale is not None and scale.size == 1 and float(scale) > 0:
                    value = float(scale.reshape(()))
                    d = value**2 if node.op_type == "Div" else 1.0 / value**2
                    if d >= 1 and abs(d - round(d)) < 1e-2 * d:
                        return round(d)
                break
            node = producers.get(node.input[0])
    return 0


def _hidden_size(graph: onnx.GraphProto) -> int:
    consts = _constants(graph)
    for node in graph.node:
        if node.op_type in ("LayerNormalization", "SkipLayerNormalization"):
            index = 1 if node.op_type == "LayerNormalization" else 2
            gamma = consts.get(node.input[index]) if len(node.input) > index else None
            if gamma is not None and gamma.ndim == 1:
                return int(gamma.shape[0])
    return 0


def _constants(graph: onnx.GraphProto) -> dict[str, np.ndarray]:
    values = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
            values[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
    return values


def _min_cosine(src: Path, dst: Path, model: onnx.ModelProto) -> float:
    """Worst per-row cosine between source and optimized outputs on a few random feeds."""
    import onnxruntime

    feeds = _random_feeds(model)
    results = []
    for path in (src, dst):
        options = onnxruntime.SessionOptions()
        options.log_severity_level = 3
        session = onnxruntime.InferenceSession(
            str(path), options, providers=["CPUExecutionProvider"]
        )
        results.append(session.run(None, feeds))
    worst = 1.0
    for a, b in zip(*results, strict=True):
        a = np.asarray(a, np.float64).reshape(a.shape[0], -1)
        b = np.asarray(b, np.float64).reshape(b.shape[0], -1)
        den = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
        cos = np.where(den > 0, (a * b).sum(1) / np.maximum(den, 1e-30), 1.0)
        worst = min(worst, float(cos.min()))
    return 0.0 if math.isnan(worst) else worst


def _random_feeds(model: onnx.ModelProto, *, batch: int = 2, seq: int = 16) -> dict:
    """Token ids in a small range, an all-ones-then-padded mask, zeros for token types,
    normal floats elsewhere; dynamic dims get `batch` (axis 0) and `seq`."""
    rng = np.random.default_rng(0)
    weights = {t.name for t in model.graph.initializer}
    feeds = {}
    for value in model.graph.input:
        if value.name in weights:
            continue
        tensor = value.type.tensor_type
        dims = [
            d.dim_value if d.HasField("dim_value") else (batch if i == 0 else seq)
            for i, d in enumerate(tensor.shape.dim)
        ]
        dtype = onnx.helper.tensor_dtype_to_np_dtype(tensor.elem_type)
        name = value.name.lower()
        if np.issubdtype(dtype, np.integer):
            if "mask" in name:
                array = np.ones(dims, dtype)
                if len(dims) == 2 and dims[1] > 2:
                    array[-1, dims[1] // 2 :] = 0
            elif "type" in name:
                array = np.zeros(dims, dtype)
            else:
                array = rng.integers(1, 100, dims).astype(dtype)
        else:
            array = rng.standard_normal(dims).astype(dtype)
        feeds[value.name] = array
    return feeds
