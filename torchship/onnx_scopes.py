"""Which PyTorch module an ONNX node came from, and the graph's tensors in topological order.

The dynamo exporter (torch >= 2.5) records the module path of every node in its
`metadata_props`: `pkg.torch.onnx.name_scopes` (a list like `['', 'stages', 'stages.0',
'stages.0.0.bn1', '<fx node>']`) and `pkg.torch.onnx.class_hierarchy` (the module classes on
that path). The legacy exporter names nodes after their scope instead
(`/stages/stages.0/stages.0.0/conv1/Conv`). ORT's graph optimizer drops the metadata but keeps
node and tensor names, so a quantized model is mapped through its FP32 source's nodes.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import onnx

__all__ = ["NodeOrigin", "node_origin", "origins_by_tensor"]

_SCOPES_KEY = "pkg.torch.onnx.name_scopes"
_CLASSES_KEY = "pkg.torch.onnx.class_hierarchy"
_WEIGHT_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")


@dataclass(frozen=True)
class NodeOrigin:
    """An ONNX node with the PyTorch module it was exported from ("" when unknown)."""

    node: str
    op_type: str
    module: str
    module_class: str = ""
    #: Position of the node in the graph's (topological) node order.
    index: int = 0

    def label(self) -> str:
        """`module (Class)` when known, else the node name."""
        if not self.module:
            return self.node
        return f"{self.module} ({self.module_class})" if self.module_class else self.module

    def to_dict(self) -> dict:
        return {
            "node": self.node,
            "op_type": self.op_type,
            "module": self.module or None,
            "module_class": self.module_class or None,
        }


def node_origin(node: onnx.NodeProto, index: int = 0) -> NodeOrigin:
    """The module `node` was exported from: dynamo metadata first, then the legacy name."""
    weight = _weight_module(node)
    if weight:
        # a Conv/Gemm/MatMul reads its module's `<module>.weight`; after the exporter folds a
        # BatchNorm into a Conv, the name scopes point at the BatchNorm instead
        return NodeOrigin(node.name, node.op_type, weight, "", index)
    props = {p.key: p.value for p in node.metadata_props}
    scopes = _literal_list(props.get(_SCOPES_KEY))
    if scopes:
        # the last scope is the FX node itself; the one before it is the innermost module
        modules = [s for s in scopes[:-1] if s]
        classes = _literal_list(props.get(_CLASSES_KEY))
        module_class = classes[-2].rsplit(".", 1)[-1] if len(classes) >= 2 else ""
        if modules:
            return NodeOrigin(node.name, node.op_type, modules[-1], module_class, index)
        return NodeOrigin(node.name, node.op_type, "", "", index)
    return NodeOrigin(node.name, node.op_type, _legacy_module(node.name), "", index)


def origins_by_tensor(graph: onnx.GraphProto) -> dict[str, NodeOrigin]:
    """Each node output's producer, with its module and position in the node order."""
    origins: dict[str, NodeOrigin] = {}
    for index, node in enumerate(graph.node):
        origin = node_origin(node, index)
        for output in node.output:
            if output:
                origins[output] = origin
    return origins


def _weight_module(node: onnx.NodeProto) -> str:
    if node.op_type not in _WEIGHT_OPS or len(node.input) < 2:
        return ""
    name = node.input[1]
    return name[: -len(".weight")] if name.endswith(".weight") else ""


def _literal_list(text: str | None) -> list[str]:
    if not text:
        return []
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return []
    return [str(v) for v in value] if isinstance(value, list | tuple) else []


def _legacy_module(name: str) -> str:
    """`/stages/stages.0/stages.0.0/conv1/Conv` -> `stages.0.0.conv1` ("" for other names).

    The legacy exporter writes one path segment per module: a container's children as their
    qualified names (`stages.0`), other submodules as their attribute name (`conv1`).
    """
    if not name.startswith("/") or name.count("/") < 2:
        return ""
    qualified = ""
    for segment in _segments(name.strip("/").split("/")[:-1]):
        if qualified and segment.startswith(qualified + "."):
            qualified = segment
        else:
            qualified = f"{qualified}.{segment}" if qualified else segment
    return qualified


def _segments(parts: Iterable[str]) -> Iterable[str]:
    return (p for p in parts if p)
