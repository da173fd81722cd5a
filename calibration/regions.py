"""Regions of an FP32 ONNX graph that INT8 may run slower than FP32, as groups of node names.

Why groups, not single nodes: on ORT's CPU kernels an op without an integer kernel (HardSigmoid,
Sigmoid, HardSwish) or a cheap op made integer (the Mul of a squeeze-excite gate, the tiny
convs of the gate) costs a DequantizeLinear/QuantizeLinear pair around it that a single node's
exclusion only moves to its neighbour. Excluding a whole family ("all SE gates", "all
hardswish activations") or a whole stage removes the pairs (docs/design.md, "INT8 on CPU").

Every helper here reads the graph that quantization reads (ORT's pre-processed model, where
BatchNorm is folded and shapes are inferred); `name_unnamed_nodes` first gives every node a
name, since ORT's `nodes_to_exclude` can only name named nodes.
"""

from __future__ import annotations

import collections
from dataclasses import dataclass
from pathlib import Path

import onnx
from onnx import numpy_helper

__all__ = ["Region", "Graph", "name_unnamed_nodes", "find_regions"]

#: Ops a squeeze-excite gate is built from between its global pool and its Mul.
_GATE_OPS = frozenset(
    {"Conv", "Gemm", "MatMul", "Relu", "Clip", "HardSigmoid", "Sigmoid", "HardSwish", "Add",
     "Div", "Mul", "Flatten", "Reshape", "Unsqueeze", "Squeeze", "Identity"}
)  # fmt: skip
_POOLS = frozenset({"GlobalAveragePool", "ReduceMean"})
#: Convs with at most this many output (or per-group input) channels count as narrow.
NARROW_CHANNELS = 16


@dataclass(frozen=True)
class Region:
    """A family of nodes excluded together: `kind` says why they are costly in INT8."""

    name: str
    kind: str
    nodes: tuple[str, ...]

    def to_dict(self) -> dict:
        return {"name": self.name, "kind": self.kind, "nodes": len(self.nodes)}


class Graph:
    """Producers, consumers and initializers of one ONNX graph (named nodes only)."""

    def __init__(self, model: onnx.ModelProto) -> None:
        graph = model.graph
        self.nodes = list(graph.node)
        self.by_name = {n.name: n for n in self.nodes}
        self.producer = {out: n for n in self.nodes for out in n.output}
        self.consumers: dict[str, list[onnx.NodeProto]] = collections.defaultdict(list)
        for node in self.nodes:
            for name in node.input:
                self.consumers[name].append(node)
        self.initializers = {i.name: i for i in graph.initializer}
        self.shapes: dict[str, tuple] = {}
        for info in (*graph.value_info, *graph.input, *graph.output):
            dims = info.type.tensor_type.shape.dim
            self.shapes[info.name] = tuple(d.dim_value if d.HasField("dim_value") else None
                                           for d in dims)  # fmt: skip
        self.outputs = {o.name for o in graph.output}

    @classmethod
    def load(cls, path: Path) -> Graph:
        return cls(onnx.load(str(path), load_external_data=False))

    def weight(self, node: onnx.NodeProto):
        """The node's constant weight (input 1) as an array, or None."""
        if len(node.input) < 2 or node.input[1] not in self.initializers:
            return None
        return numpy_helper.to_array(self.initializers[node.input[1]])

    def attr(self, node: onnx.NodeProto, name: str, default=None):
        for a in node.attribute:
            if a.name == name:
                return onnx.helper.get_attribute_value(a)
        return default

    def is_depthwise(self, node: onnx.NodeProto) -> bool:
        w = self.weight(node)
        group = self.attr(node, "group", 1)
        return node.op_type == "Conv" and w is not None and group > 1 and w.shape[1] == 1

    def only_consumer(self, tensor: str) -> onnx.NodeProto | None:
        users = self.consumers.get(tensor, [])
        return users[0] if len(users) == 1 and tensor not in self.outputs else None


def name_unnamed_nodes(path: Path) -> int:
    """Give every unnamed node a unique name (rewrites `path`); returns how many were named."""
    model = onnx.load(str(path))
    taken = {n.name for n in model.graph.node if n.name}
    named = 0
    for index, node in enumerate(model.graph.node):
        if node.name:
            continue
        base = f"{node.op_type}_{index}_{node.output[0] if node.output else ''}"
        name, k = base, 1
        while name in taken:
            name, k = f"{base}_{k}", k + 1
        node.name = name
        taken.add(name)
        named += 1
    if named:
        onnx.save(model, str(path))
    return named


def find_regions(path: Path) -> list[Region]:
    """The region families of the graph at `path`, each non-empty, most specific first."""
    g = Graph.load(path)
    se = _se_gates(g)
    gated = {name for nodes in se for name in nodes}
    found = [
        Region("squeeze-excite gates", "se", _flat(se)),
        Region("hardswish activations", "hardswish", _flat(_self_gated(g, "HardSigmoid"))),
        Region("silu activations", "silu", _flat(_self_gated(g, "Sigmoid", skip=gated))),
        Region("float activations", "float-act", _float_activations(g, skip=gated)),
    ]
    acts = {n for r in found[1:3] for n in r.nodes}
    found.append(
        Region("convs feeding hardswish/silu", "act-convs", _producers_of(g, acts, "Conv"))
    )
    depthwise = tuple(n.name for n in g.nodes if g.is_depthwise(n))
    found.append(Region("depthwise convs", "depthwise", depthwise))
    found.append(Region(f"narrow convs (<= {NARROW_CHANNELS} channels)", "narrow", _narrow(g)))
    found += _stages(g)
    seen: set[tuple[str, ...]] = set()
    unique = []
    for region in found:
        if region.nodes and region.nodes not in seen:
            seen.add(region.nodes)
            unique.append(region)
    return unique


def _flat(groups) -> tuple[str, ...]:
    return tuple(name for group in groups for name in group)


def _se_gates(g: Graph) -> list[tuple[str, ...]]:
    """Mul(x, gate(pool(x))): the pool, the gate's nodes and the Mul, per block."""
    blocks = []
    for mul in (n for n in g.nodes if n.op_type == "Mul" and len(n.input) == 2):
        for x, gate in (mul.input, mul.input[::-1]):
            chain = _gate_chain(g, gate, x)
            if chain:
                blocks.append((*chain, mul.name))
                break
    return blocks


def _gate_chain(g: Graph, tensor: str, source: str) -> list[str] | None:
    """Nodes from a global pool of `source` to `tensor` (gate ops only), else None."""
    chain: list[str] = []
    frontier = [tensor]
    while frontier:
        node = g.producer.get(frontier.pop())
        if node is None or node.name in chain:
            continue
        if node.op_type in _POOLS:
            if node.input[0] != source:
                return None
            chain.append(node.name)
            continue
        if node.op_type not in _GATE_OPS or len(chain) > 12:
            return None
        chain.append(node.name)
        frontier += [i for i in node.input if i and i not in g.initializers]
    has_pool = any(g.by_name[n].op_type in _POOLS for n in chain)
    return chain[::-1] if has_pool else None


def _self_gated(g: Graph, op: str, *, skip=frozenset()) -> list[tuple[str, ...]]:
    """x * op(x) (hardswish as HardSigmoid+Mul, SiLU as Sigmoid+Mul), or a HardSwish node."""
    found = []
    for node in g.nodes:
        if node.name in skip:
            continue
        if op == "HardSigmoid" and node.op_type == "HardSwish":
            found.append((node.name,))
        if node.op_type != op:
            continue
        mul = g.only_consumer(node.output[0])
        if mul is not None and mul.op_type == "Mul" and node.input[0] in mul.input:
            if mul.name not in skip:
                found.append((node.name, mul.name))
    return found


def _float_activations(g: Graph, *, skip) -> tuple[str, ...]:
    """Activations ORT has no integer kernel for, and the Mul each feeds."""
    names = []
    for node in g.nodes:
        if node.name in skip or node.op_type not in ("HardSigmoid", "Sigmoid", "HardSwish"):
            continue
        names.append(node.name)
        for user in g.consumers.get(node.output[0], []):
            if user.op_type == "Mul" and user.name not in skip:
                names.append(user.name)
    return tuple(dict.fromkeys(names))


def _producers_of(g: Graph, names, op_type: str) -> tuple[str, ...]:
    found = []
    for name in names:
        for tensor in g.by_name[name].input:
            node = g.producer.get(tensor)
            if node is not None and node.op_type == op_type:
                found.append(node.name)
    return tuple(dict.fromkeys(found))


def _narrow(g: Graph) -> tuple[str, ...]:
    found = []
    for node in g.nodes:
        w = g.weight(node)
        if node.op_type != "Conv" or w is None or g.is_depthwise(node):
            continue
        if w.shape[0] <= NARROW_CHANNELS or w.shape[1] <= NARROW_CHANNELS:
            found.append(node.name)
    return tuple(found)


def _stages(g: Graph) -> list[Region]:
    """Nodes by the spatial size of their output ("stage 16x16"), largest first."""
    by_size: dict[tuple, list[str]] = collections.defaultdict(list)
    for node in g.nodes:
        shape = g.shapes.get(node.output[0]) if node.output else None
        if shape and len(shape) == 4 and shape[2] and shape[3] and shape[2] * shape[3] > 1:
            by_size[(shape[2], shape[3])].append(node.name)
    ordered = sorted(by_size.items(), key=lambda kv: -kv[0][0] * kv[0][1])
    if len(ordered) < 2:
        return []
    return [Region(f"stage {h}x{w}", "stage", tuple(names)) for (h, w), names in ordered]
