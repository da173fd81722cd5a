"""What each layer alone costs: the FP32 model with only that layer's Q/DQ, from the INT8 model.

The accumulated and added SQNR of a fully quantized model mix a layer's own rounding with
how the layers after it amplify upstream noise. The question a user asks ("which layer kills
my INT8 accuracy?") is answered by quantizing one layer at a time, as ORT's
`nodes_to_quantize=[layer]` would. The quantized model already holds every scale and zero
point, so no calibration is needed: for a layer (a node and the nodes fused into its row, e.g.
a Conv with the Relu ORT folded into its Q/DQ), the FP32 graph gets the INT8 model's Q/DQ on
the layer's activation inputs (read by all their consumers, as in the quantized model) and on
its output, and the dequantized weights; the model's outputs are then compared with FP32's,
with Q/DQ emulated in float. One small graph edit and one run per layer, bounded in time.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper

__all__ = ["LayerSpan", "isolated_output_sqnr"]

log = logging.getLogger(__name__)

_SUFFIX = "_torchship_alone"
_OUTPUT_INPUT_SUFFIX = "_QuantizeLinear_Input"


@dataclass(frozen=True)
class LayerSpan:
    """A row of the report: its FP32 nodes (by index) and the tensor its output is seen at."""

    key: str
    members: tuple[int, ...]
    tensor: str


def isolated_output_sqnr(
    fp32: onnx.ModelProto,
    quant: onnx.GraphProto,
    weights: Mapping[str, np.ndarray],
    spans: Sequence[LayerSpan],
    feeds: Sequence[Mapping[str, np.ndarray]],
    *,
    scratch: Path,
    budget_s: float = 60.0,
) -> dict[str, float]:
    """Output SQNR (dB, the worst output) with only each span quantized, by span key. Spans
    with nothing to quantize, and those past `budget_s`, are left out."""
    import onnxruntime

    qparams = _quantize_params(quant)
    reference = _run(onnxruntime, _save(fp32, scratch / "alone-ref.onnx"), feeds)
    results: dict[str, float] = {}
    start = time.monotonic()
    for span in spans:
        if time.monotonic() - start > budget_s:
            log.info("per-layer isolation stopped after %.0f s (%d layers)", budget_s, len(results))
            break
        model = _with_only(fp32, span, qparams, weights)
        if model is None:
            continue
        path = _save(model, scratch / "alone.onnx")
        got = _run(onnxruntime, path, feeds)
        results[span.key] = min(_sqnr(reference[k], got[k]) for k in reference)
    return results


#: tensor -> (scale, zero point, axis or None) of the QuantizeLinear that reads it
QParams = dict[str, tuple[onnx.TensorProto, onnx.TensorProto | None, int | None]]


def _quantize_params(quant: onnx.GraphProto) -> QParams:
    constants = {i.name: i for i in quant.initializer}
    found: QParams = {}
    for node in quant.node:
        if node.op_type != "QuantizeLinear" or node.input[1] not in constants:
            continue
        zero = constants.get(node.input[2]) if len(node.input) > 2 else None
        axis = next((a.i for a in node.attribute if a.name == "axis"), None)
        # a graph output's producer writes `<output>_QuantizeLinear_Input` in ORT's QDQ models
        tensor = node.input[0].removesuffix(_OUTPUT_INPUT_SUFFIX)
        found.setdefault(tensor, (constants[node.input[1]], zero, axis))
    return found


def _with_only(
    fp32: onnx.ModelProto, span: LayerSpan, qparams: QParams, weights: Mapping[str, np.ndarray]
) -> onnx.ModelProto | None:
    """A copy of `fp32` with Q/DQ only on `span`'s inputs and output; None: nothing to add."""
    model = onnx.ModelProto()
    model.CopyFrom(fp32)
    graph = model.graph
    members = [graph.node[i] for i in span.members]
    produced = {o for n in members for o in n.output}
    constants = {i.name for i in graph.initializer}
    added: list[onnx.NodeProto] = []
    for node in members:
        for j, name in enumerate(node.input):
            if name in weights:
                alias = f"{name}{_SUFFIX}_w"
                if alias not in constants:
                    graph.initializer.append(numpy_helper.from_array(weights[name], alias))
                    constants.add(alias)
                node.input[j] = alias
            elif name and name not in produced and name not in constants and name in qparams:
                # as in the quantized model (and ORT's nodes_to_quantize): one Q/DQ on the
                # tensor, read by every consumer, not only by this layer
                _rewire(graph, name, _qdq(graph, added, name, qparams[name], tag=f"in{len(added)}"))
    if span.tensor in qparams:
        _quantize_output(graph, added, span.tensor, qparams[span.tensor], members)
    if not added and not any(_SUFFIX in i for n in members for i in n.input):
        return None
    graph.node.extend(added)
    _sort_nodes(graph)
    return model


def _sort_nodes(graph: onnx.GraphProto) -> None:
    """Topological order, keeping the original order where it allows (repeated sweeps)."""
    ready = {i.name for i in graph.input} | {i.name for i in graph.initializer} | {""}
    pending, ordered = list(graph.node), []
    while pending:
        deferred = []
        for node in pending:
            if all(i in ready for i in node.input):
                ordered.append(node)
                ready.update(node.output)
            else:
                deferred.append(node)
        if len(deferred) == len(pending):  # inputs from outer scopes: keep what is left as is
            ordered.extend(deferred)
            break
        pending = deferred
    copies = [onnx.NodeProto() for _ in ordered]
    for copy, node in zip(copies, ordered, strict=True):
        copy.CopyFrom(node)
    del graph.node[:]
    graph.node.extend(copies)


def _rewire(graph: onnx.GraphProto, tensor: str, replacement: str) -> None:
    for node in graph.node:
        for j, name in enumerate(node.input):
            if name == tensor:
                node.input[j] = replacement


def _qdq(graph, added: list, tensor: str, params, *, tag: str) -> str:
    scale, zero, axis = params
    names = [f"{tensor}{_SUFFIX}_{tag}_{k}" for k in ("scale", "zero", "q", "dq")]
    graph.initializer.append(_renamed(scale, names[0]))
    inputs = [tensor, names[0]]
    if zero is not None:
        graph.initializer.append(_renamed(zero, names[1]))
        inputs.append(names[1])
    kwargs = {} if axis is None else {"axis": axis}
    q = helper.make_node("QuantizeLinear", inputs, [names[2]], name=f"{names[2]}_{tag}", **kwargs)
    dq_inputs = [names[2], *inputs[1:]]
    dq = helper.make_node("DequantizeLinear", dq_inputs, [names[3]], name=f"{names[3]}_{tag}",
                          **kwargs)  # fmt: skip
    added.extend([q, dq])
    return names[3]


def _quantize_output(graph, added: list, tensor: str, params, members) -> None:
    """Q/DQ on the span's output: its producer writes `<tensor>_pre`, the DQ writes `tensor`."""
    pre = f"{tensor}{_SUFFIX}_pre"
    for node in members:
        for j, name in enumerate(node.output):
            if name == tensor:
                node.output[j] = pre
    _qdq(graph, added, pre, params, tag="out")
    added[-1].output[0] = tensor


def _renamed(tensor: onnx.TensorProto, name: str) -> onnx.TensorProto:
    copy = onnx.TensorProto()
    copy.CopyFrom(tensor)
    copy.name = name
    return copy


def _save(model: onnx.ModelProto, path: Path) -> Path:
    onnx.save(model, str(path))
    return path


def _run(onnxruntime, path: Path, feeds) -> dict[str, np.ndarray]:
    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    # Q/DQ emulated in float, as qdq_loss_debug runs them: ORT's fused integer kernels would
    # mix in their own arithmetic (the full model's report shows the deployed timing instead)
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = onnxruntime.InferenceSession(
        str(path), sess_options=options, providers=["CPUExecutionProvider"]
    )
    names = [o.name for o in session.get_outputs()]
    runs = [session.run(names, dict(f)) for f in feeds]
    return {n: np.concatenate([r[k].ravel() for r in runs]) for k, n in enumerate(names)}


def _sqnr(reference: np.ndarray, got: np.ndarray) -> float:
    ref = reference.astype(np.float64)
    noise = float(np.linalg.norm(ref - got.astype(np.float64)))
    signal = float(np.linalg.norm(ref))
    if noise == 0.0:
        return math.inf
    return 20.0 * math.log10(max(signal, 1e-30) / noise)
