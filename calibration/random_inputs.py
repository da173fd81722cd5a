"""Random eval inputs, the last resort when no data is given: token ids within the vocabulary.

An integer input without a `value_range` would draw ids 0..1; when it indexes an embedding
table (a Gather on a [V, ...] initializer, possibly through a Cast), the table's V bounds it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx

from torchship.specs import InputSpec

__all__ = ["vocabulary_bounds", "bounded_specs"]


def vocabulary_bounds(model_path: Path) -> dict[str, int]:
    """Input name -> rows of the embedding table it indexes, for integer graph inputs that feed
    a Gather's indices (directly or through Cast/Reshape/Unsqueeze/Flatten)."""
    graph = onnx.load(str(model_path), load_external_data=False).graph
    rows = {t.name: t.dims[0] for t in graph.initializer if len(t.dims) >= 2}
    consumers: dict[str, list] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    bounds = {}
    for graph_input in graph.input:
        tensors, seen = [graph_input.name], set()
        while tensors:
            tensor = tensors.pop()
            seen.add(tensor)
            for node in consumers.get(tensor, []):
                if node.op_type == "Gather" and node.input[1] == tensor and node.input[0] in rows:
                    bound = rows[node.input[0]]
                    bounds[graph_input.name] = min(bounds.get(graph_input.name, bound), bound)
                elif node.op_type in ("Cast", "Reshape", "Unsqueeze", "Flatten", "Squeeze"):
                    tensors.extend(o for o in node.output[:1] if o not in seen)
    return bounds


def bounded_specs(specs: Sequence[InputSpec], model_path: Path) -> list[InputSpec]:
    """`specs` with a value range (0, V) on integer inputs that have none and index a table."""
    unbounded = [
        s for s in specs if np.issubdtype(s.np_dtype, np.integer) and s.value_range is None
    ]
    if not unbounded:
        return list(specs)
    bounds = vocabulary_bounds(model_path)
    return [
        replace(s, value_range=(0, bounds[s.name])) if s in unbounded and s.name in bounds else s
        for s in specs
    ]
