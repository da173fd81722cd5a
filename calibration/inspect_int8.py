"""Proof that a quantized model runs as INT8: op counts in the graph ORT actually executes."""

from __future__ import annotations

import collections
import logging
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import onnx

__all__ = ["OpCounts", "count_ops", "optimized_op_types"]

log = logging.getLogger(__name__)

#: Ops that compute in integer arithmetic after ORT's QDQ fusions (CPU EP).
INTEGER_OPS = frozenset(
    {
        "QLinearConv", "QLinearMatMul", "QGemm", "MatMulInteger", "ConvInteger",
        "MatMulIntegerToFloat", "DynamicQuantizeMatMul", "QLinearAdd", "QLinearMul",
        "QLinearAveragePool", "QLinearGlobalAveragePool", "QLinearConcat", "QLinearSigmoid",
        "QLinearLeakyRelu", "QLinearSoftmax", "QLinearReduceMean", "QAttention",
        "QEmbedLayerNormalization", "NhwcQLinearConv", "QLinearWhere",
    }
)  # fmt: skip
QDQ_OPS = frozenset({"QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear"})
#: Compute-heavy float ops whose presence means work left in floating point.
FLOAT_COMPUTE_OPS = frozenset(
    {"Conv", "FusedConv", "Gemm", "MatMul", "FusedMatMul", "FusedGemm", "ConvTranspose",
     "NhwcFusedConv", "Attention", "MultiHeadAttention"}
)  # fmt: skip
#: Data-layout ops ORT inserts (NCHWc / NHWC conversions) that cost time between kernels.
LAYOUT_OPS = frozenset({"ReorderInput", "ReorderOutput", "Transpose"})


@dataclass(frozen=True)
class OpCounts:
    """Op types of the optimized graph, grouped. `integer_share`: integer / (integer + float)."""

    integer: int
    qdq: int
    float_compute: int
    layout: int
    other: int
    by_type: dict[str, int] = field(default_factory=dict)

    @property
    def integer_share(self) -> float:
        total = self.integer + self.float_compute
        return self.integer / total if total else 0.0

    def to_dict(self) -> dict:
        return {
            "integer_ops": self.integer,
            "qdq_left": self.qdq,
            "float_compute_ops": self.float_compute,
            "layout_ops": self.layout,
            "other_ops": self.other,
            "integer_share": round(self.integer_share, 4),
            "by_type": dict(sorted(self.by_type.items())),
        }


def optimized_op_types(model_path: Path, *, threads: int | None = 1) -> collections.Counter:
    """Op type counts of the graph after ORT's full graph optimization on the CPU EP."""
    import onnxruntime

    with tempfile.TemporaryDirectory(prefix="torchship-opt-") as tmp:
        options = onnxruntime.SessionOptions()
        options.optimized_model_filepath = str(Path(tmp) / "optimized.onnx")
        options.log_severity_level = 3  # the "hardware specific optimizations" notice
        options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
        if threads:
            options.intra_op_num_threads = threads
        session = onnxruntime.InferenceSession(
            str(model_path), sess_options=options, providers=["CPUExecutionProvider"]
        )
        del session
        graph = onnx.load(options.optimized_model_filepath, load_external_data=False).graph
    return collections.Counter(node.op_type for node in graph.node)


def count_ops(model_path: Path) -> OpCounts:
    """Group the optimized graph's ops: fused integer, Q/DQ left, float compute, layout, other."""
    types = optimized_op_types(model_path)
    groups = {"integer": 0, "qdq": 0, "float_compute": 0, "layout": 0, "other": 0}
    for op, n in types.items():
        if op in INTEGER_OPS:
            groups["integer"] += n
        elif op in QDQ_OPS:
            groups["qdq"] += n
        elif op in FLOAT_COMPUTE_OPS:
            groups["float_compute"] += n
        elif op in LAYOUT_OPS:
            groups["layout"] += n
        else:
            groups["other"] += n
    return OpCounts(**groups, by_type=dict(types))
