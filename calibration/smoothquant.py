"""SmoothQuant on an ONNX graph: move activation outliers into the weights before INT8.

Transformer activations have a few channels with values 10-100x the rest; one per-tensor INT8
scale for such a tensor leaves the other channels a handful of levels. SmoothQuant (Xiao et al.,
2023) divides each input channel k of a MatMul's activation by s_k and multiplies row k of its
weight by s_k — the product is unchanged in exact arithmetic — with
s_k = max|X_k|^α / max|W_k|^(1-α), so both sides become easier to quantize.

The division is folded into the producing LayerNormalization's gamma/beta when that output feeds
only the smoothed MatMuls; otherwise (post-LN encoders, whose LayerNorm output is also the
residual, and GELU outputs) a Mul by 1/s is inserted before them. ORT's own SmoothQuant
(`extra_options={"SmoothQuant": True}`) needs neural-compressor 2.x's `adaptor.ox_utils`,
which neural-compressor 3.x (the release pip installs) no longer ships.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper

__all__ = ["SmoothTarget", "smooth_targets", "activation_maxima", "smooth", "SmoothReport"]

log = logging.getLogger(__name__)

_NORMS = {"LayerNormalization": (1, 2), "SkipLayerNormalization": (2, 3)}  # gamma, beta inputs
_CLIP = (1e-4, 1e4)


@dataclass(frozen=True)
class SmoothTarget:
    """Nodes that share one activation input and have constant weights of shape [K, N]."""

    activation: str
    nodes: tuple[str, ...]
    weights: tuple[str, ...]


@dataclass(frozen=True)
class SmoothReport:
    alpha: float
    groups: int
    folded: int  # groups whose 1/s went into a LayerNorm's gamma/beta
    inserted: int  # groups that got a Mul node
    max_scale: float

    def to_dict(self) -> dict:
        return {
            "alpha": self.alpha,
            "groups": self.groups,
            "folded_into_layernorm": self.folded,
            "mul_nodes_inserted": self.inserted,
            "max_scale": round(self.max_scale, 4),
        }


def smooth_targets(model: onnx.ModelProto) -> list[SmoothTarget]:
    """MatMul (B a 2-D initializer) and fused Attention (input 1 the packed QKV weight)
    nodes, grouped by activation; a weight shared with other nodes leaves its group out."""
    inits = {t.name: t for t in model.graph.initializer}
    uses: dict[str, int] = {}
    for node in model.graph.node:
        for name in node.input:
            uses[name] = uses.get(name, 0) + 1
    groups: dict[str, list[tuple[str, str]]] = {}
    for node in model.graph.node:
        if node.op_type not in ("MatMul", "Attention") or len(node.input) < 2:
            continue
        weight = inits.get(node.input[1])
        if weight is None or len(weight.dims) != 2 or uses[node.input[1]] != 1:
            continue
        if node.input[0] in inits or not node.name:
            continue
        groups.setdefault(node.input[0], []).append((node.name, node.input[1]))
    return [
        SmoothTarget(act, tuple(n for n, _ in members), tuple(w for _, w in members))
        for act, members in groups.items()
    ]


def activation_maxima(
    model: onnx.ModelProto, tensors: Iterable[str], batches: Iterable[Mapping[str, np.ndarray]]
) -> dict[str, np.ndarray]:
    """Per-channel (last axis) max |x| of `tensors` over the calibration batches (streamed)."""
    import onnxruntime

    names = list(tensors)
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    known = {o.name for o in probe.graph.output}
    for name in names:
        if name not in known:
            probe.graph.output.append(helper.make_empty_tensor_value_info(name))
    maxima: dict[str, np.ndarray] = {}
    with tempfile.TemporaryDirectory(prefix="torchship-sq-") as tmp:
        path = Path(tmp) / "probe.onnx"
        onnx.save(probe, str(path), save_as_external_data=probe.ByteSize() > 1.8e9)
        options = onnxruntime.SessionOptions()
        options.log_severity_level = 3
        session = onnxruntime.InferenceSession(
            str(path), options, providers=["CPUExecutionProvider"]
        )
        for feeds in batches:
            values = session.run(names, dict(feeds))
            for name, value in zip(names, values, strict=True):
                m = np.abs(value.reshape(-1, value.shape[-1])).max(axis=0).astype(np.float64)
                maxima[name] = m if name not in maxima else np.maximum(maxima[name], m)
        del session
    return maxima


def smooth(
    model: onnx.ModelProto,
    targets: list[SmoothTarget],
    maxima: Mapping[str, np.ndarray],
    *,
    alpha: float,
) -> tuple[onnx.ModelProto, SmoothReport]:
    """A copy of `model` with every target group smoothed at migration strength `alpha`."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    inits = {t.name: t for t in graph.initializer}
    nodes = {n.name: n for n in graph.node if n.name}
    folded = inserted = 0
    max_scale = 1.0
    for group in targets:
        weights = [numpy_helper.to_array(inits[w]).astype(np.float64) for w in group.weights]
        w_max = np.max([np.abs(w).max(axis=1) for w in weights], axis=0)
        x_max = maxima.get(group.activation)
        if x_max is None or x_max.shape != w_max.shape:
            continue
        scale = _scales(x_max, w_max, alpha)
        max_scale = max(max_scale, float(scale.max()), float(1 / scale.min()))
        for name, w in zip(group.weights, weights, strict=True):
            _replace(inits[name], (w * scale[:, None]).astype(np.float32))
        if _fold_into_norm(graph, inits, group, scale):
            folded += 1
        else:
            _insert_mul(graph, nodes, group, scale)
            inserted += 1
    report = SmoothReport(alpha, folded + inserted, folded, inserted, max_scale)
    return out, report


def _scales(x_max: np.ndarray, w_max: np.ndarray, alpha: float) -> np.ndarray:
    x = np.maximum(x_max, 1e-8)
    w = np.maximum(w_max, 1e-8)
    scale = np.power(x, alpha) / np.power(w, 1.0 - alpha)
    scale = np.where((x_max > 0) & (w_max > 0), scale, 1.0)
    return np.clip(scale, *_CLIP)


def _replace(tensor: onnx.TensorProto, array: np.ndarray) -> None:
    tensor.CopyFrom(numpy_helper.from_array(array, tensor.name))


def _fold_into_norm(graph, inits, group: SmoothTarget, scale: np.ndarray) -> bool:
    """Divide the producing LayerNorm's gamma/beta by s when its output feeds only the group."""
    producer = next((n for n in graph.node if group.activation in n.output), None)
    if producer is None or producer.op_type not in _NORMS:
        return False
    if list(producer.output).index(group.activation) != 0:
        return False
    consumers = [n for n in graph.node if group.activation in n.input]
    outputs = {o.name for o in graph.output}
    if group.activation in outputs or {n.name for n in consumers} != set(group.nodes):
        return False
    params = [producer.input[i] for i in _NORMS[producer.op_type] if i < len(producer.input)]
    if not all(p in inits for p in params) or any(
        sum(p in n.input for n in graph.node) != 1 for p in params
    ):
        return False
    for p in params:
        _replace(inits[p], (numpy_helper.to_array(inits[p]) / scale).astype(np.float32))
    return True


def _insert_mul(graph, nodes, group: SmoothTarget, scale: np.ndarray) -> None:
    base = f"{group.nodes[0]}_smooth"
    inverse = numpy_helper.from_array((1.0 / scale).astype(np.float32), f"{base}_inv_scale")
    graph.initializer.append(inverse)
    smoothed = f"{base}_out"
    mul = helper.make_node("Mul", [group.activation, inverse.name], [smoothed], name=f"{base}_mul")
    # ORT's static quantizer leaves tensors of unknown type unquantized: type the new one
    known = next((v for v in graph.value_info if v.name == group.activation), None)
    typed = onnx.ValueInfoProto()
    if known is not None:
        typed.CopyFrom(known)
        typed.name = smoothed
    else:
        typed = helper.make_tensor_value_info(smoothed, onnx.TensorProto.FLOAT, None)
    graph.value_info.append(typed)
    first = min(i for i, n in enumerate(graph.node) if n.name in group.nodes)
    graph.node.insert(first, mul)
    for name in group.nodes:
        node = nodes[name]
        node.input[0] = smoothed
