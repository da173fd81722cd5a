"""Per-node INT8 sensitivity from one pass: the error each node injects in the quantized model.

The fully quantized model runs on a few eval batches with every candidate node's inputs and
output exposed as graph outputs (quantization keeps those names). For MatMul, Gemm and Conv the
node's own error is exact: its quantized output against the float op applied to the same
(already noisy) inputs with the FP32 weights, as a noise-to-signal power ratio (NSR). Other
ops score the NSR they add over their inputs against an FP32 run. One or two model runs rank
every node, where a build per node did not scale (docs/design.md, "The accuracy fallback").
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from torchship.artifact import Artifact, Format
from torchship.calibration.fallback import FallbackResult, Trial, fallback_loop
from torchship.data import DataSet, ShortBatch
from torchship.runtimes.base import get_runner

__all__ = ["node_sensitivity", "FallbackResult", "Trial", "fallback_loop"]

log = logging.getLogger(__name__)

#: Eval samples the ranking pass runs: enough for a stable NSR, cheap on large models (the
#: float reference ops run in numpy: 64 MiniLM samples took 65 s there, 16 take a few).
_RANKING_SAMPLES = 16
#: Models above this size are saved with external data (protobuf's 2 GB limit).
_EXTERNAL_DATA_BYTES = 1 << 30


def node_sensitivity(
    reference: Path,
    quantized: Path,
    nodes: Sequence[str],
    data: DataSet,
    *,
    scratch: Path,
    threads: int | None = None,
) -> dict[str, float]:
    """Node name -> the NSR it injects in `quantized` (higher: INT8 hurts it more); the names
    and FP32 weights come from `reference`. Nodes missing from the quantized graph score 0."""
    graph = onnx.load(str(reference)).graph
    weights = {t.name: t for t in graph.initializer}
    by_name = {n.name: n for n in graph.node if n.name in set(nodes)}
    plans = _plans(by_name.values(), onnx.load(str(quantized), load_external_data=False).graph,
                   weights)  # fmt: skip
    tensors = sorted({t for ins, out in plans.values() for t in (*ins, out) if t})
    batches = _first_samples(data, _RANKING_SAMPLES)
    int8 = _run(_exposed(quantized, tensors, scratch / "sensitivity-int8.onnx"), data, batches,
                threads)  # fmt: skip
    local = _LocalError(weights)
    for node in by_name.values():
        for values in int8:
            local.add(node, plans[node.name], values)
    scores = {name: local.nsr(name) for name in by_name}
    missing = [name for name, score in scores.items() if score is None]
    if missing:  # ops without a float reference here: the NSR they add over their inputs
        names = sorted({t for m in missing for t in (*by_name[m].input, by_name[m].output[0])})
        exposed = [_exposed(p, names, scratch / f"sensitivity-{i}.onnx")
                   for i, p in enumerate((reference, quantized))]  # fmt: skip
        fp32, q = (_run(path, data, batches, threads) for path in exposed)
        scores.update(_added_nsr([by_name[m] for m in missing], fp32, q))
    return {name: float(score) for name, score in scores.items()}


def _plans(nodes, quantized, weights) -> dict[str, tuple[tuple[str | None, ...], str]]:
    """Node -> (the float tensor each input was quantized from, or None for a weight; its
    output) in the quantized graph. Static QDQ keeps node names but may rename tensors (a Relu
    folded into the output Q); dynamic quantization renames nodes but keeps the tensors."""
    q_nodes = {n.name: n for n in quantized.node}
    producer = {out: n for n in quantized.node for out in n.output}

    def float_source(tensor: str) -> str:
        dq = producer.get(tensor)
        if dq is not None and dq.op_type == "DequantizeLinear":
            q = producer.get(dq.input[0])
            if q is not None and q.op_type == "QuantizeLinear":
                return q.input[0]
        return tensor

    plans = {}
    for node in nodes:
        q_node = q_nodes.get(node.name)
        if q_node is not None and q_node.op_type == node.op_type:
            ins = tuple(
                None if ref in weights else float_source(t)
                for ref, t in zip(node.input, q_node.input, strict=False)
            )
            plans[node.name] = (ins, q_node.output[0])
        else:
            ins = tuple(None if t in weights else t for t in node.input)
            plans[node.name] = (ins, node.output[0])
    return plans


class _LocalError:
    """Noise and signal per node: quantized output vs the float op on the same inputs."""

    def __init__(self, weights: dict) -> None:
        self.weights = weights
        self.arrays: dict[str, np.ndarray] = {}
        self.noise: dict[str, float] = {}
        self.signal: dict[str, float] = {}
        self.unknown: set[str] = set()

    def weight(self, name: str) -> np.ndarray:
        if name not in self.arrays:
            self.arrays[name] = numpy_helper.to_array(self.weights[name]).astype(np.float32)
        return self.arrays[name]

    def add(self, node, plan, values: dict[str, np.ndarray]) -> None:
        sources, output = plan
        try:
            inputs = [
                None if not ref else self.weight(ref) if src is None else values[src]
                for ref, src in zip(node.input, sources, strict=True)
            ]
            got = values[output]
        except KeyError:
            self.unknown.add(node.name)
            return
        expected = _float_op(
            node, [None if x is None else np.asarray(x, np.float32) for x in inputs]
        )
        if expected is None or expected.shape != got.shape:
            self.unknown.add(node.name)
            return
        self.noise[node.name] = self.noise.get(node.name, 0.0) + float(
            np.sum((got - expected) ** 2)
        )
        self.signal[node.name] = self.signal.get(node.name, 0.0) + float(np.sum(expected**2))

    def nsr(self, name: str) -> float | None:
        if name in self.unknown or name not in self.noise:
            return None
        signal = self.signal[name]
        return self.noise[name] / signal if signal > 0 else 0.0


def _float_op(node, inputs: list) -> np.ndarray | None:
    """The FP32 result of a MatMul, Gemm or Conv node on `inputs`; None for other ops."""
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    if node.op_type == "MatMul":
        return np.matmul(inputs[0], inputs[1])
    if node.op_type == "Gemm":
        a = inputs[0].T if attrs.get("transA") else inputs[0]
        b = inputs[1].T if attrs.get("transB") else inputs[1]
        out = attrs.get("alpha", 1.0) * (a @ b)
        if len(inputs) > 2 and inputs[2] is not None:
            out = out + attrs.get("beta", 1.0) * inputs[2]
        return out
    if node.op_type == "Conv":
        return _conv(inputs, attrs)
    return None


def _conv(inputs: list, attrs: dict) -> np.ndarray | None:
    import torch
    import torch.nn.functional as F

    x, w = torch.from_numpy(inputs[0]), torch.from_numpy(inputs[1])
    dims = w.ndim - 2
    if dims not in (1, 2, 3) or attrs.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET"):
        return None
    pads = list(attrs.get("pads", [0] * (2 * dims)))
    begin, end = pads[:dims], pads[dims:]
    if begin != end:
        x = F.pad(x, [p for pair in zip(reversed(begin), reversed(end), strict=True) for p in pair])
        begin = [0] * dims
    bias = torch.from_numpy(inputs[2]) if len(inputs) > 2 and inputs[2] is not None else None
    conv = (F.conv1d, F.conv2d, F.conv3d)[dims - 1]
    out = conv(
        x, w, bias, stride=list(attrs.get("strides", [1] * dims)), padding=begin,
        dilation=list(attrs.get("dilations", [1] * dims)), groups=attrs.get("group", 1),
    )  # fmt: skip
    return out.numpy()


def _added_nsr(nodes, fp32: list[dict], int8: list[dict]) -> dict[str, float]:
    """NSR of each node's output minus the largest NSR of its inputs, both against FP32."""
    noise: dict[str, float] = {}
    signal: dict[str, float] = {}
    for ref_out, q_out in zip(fp32, int8, strict=True):
        for name, ref in ref_out.items():
            if name in q_out and q_out[name].shape == ref.shape:
                r = ref.astype(np.float64)
                noise[name] = noise.get(name, 0.0) + float(np.sum((q_out[name] - r) ** 2))
                signal[name] = signal.get(name, 0.0) + float(np.sum(r**2))
    nsr = {t: noise[t] / signal[t] if signal[t] > 0 else 0.0 for t in noise}
    scores = {}
    for node in nodes:
        inherited = max((nsr.get(t, 0.0) for t in node.input if t), default=0.0)
        scores[node.name] = max(0.0, nsr.get(node.output[0], 0.0) - inherited)
    return scores


def _exposed(model: Path, tensors: Sequence[str], target: Path) -> Path:
    """A copy of `model` that also outputs those of `tensors` some node of it produces."""
    proto = onnx.load(str(model))
    produced = {out for node in proto.graph.node for out in node.output}
    present = {o.name for o in proto.graph.output}
    for name in tensors:
        if name in produced and name not in present:
            proto.graph.output.append(
                onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None)
            )
    large = proto.ByteSize() > _EXTERNAL_DATA_BYTES
    onnx.save(proto, str(target), save_as_external_data=large, location=f"{target.name}.data")
    return target


def _first_samples(data: DataSet, count: int) -> list:
    """Batches holding the first `count` samples (a dynamic batch is cut to fit)."""
    batches, taken = [], 0
    for batch in data.batches(short=ShortBatch.PAD):
        if taken >= count:
            break
        if not data.fixed_batch and batch.size > count - taken:
            keep = count - taken
            batch = replace(
                batch, feeds={k: v[:keep] if v.ndim else v for k, v in batch.feeds.items()}
            )
        batches.append(batch)
        taken += batch.size
    return batches


def _run(path: Path, data: DataSet, batches, threads: int | None) -> list[dict]:
    """Every output of `path` on each batch, with the batch's own feeds (graph inputs)."""
    artifact = Artifact(path, Format.ONNX, data.inputs, ())
    with get_runner("ort-cpu")(artifact, threads=threads) as session:
        return [{**batch.feeds, **session.infer(batch.feeds)} for batch in batches]
