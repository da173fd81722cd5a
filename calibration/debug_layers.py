"""Per-layer quantization error: which node of a quantized ONNX model costs accuracy or time.

ORT's `qdq_loss_debug` does the compute: both models get every float tensor exposed as an
output (`modify_model_output_intermediate_tensors`), run on the same feeds
(`collect_activations`), the quantized model's tensors are paired with the FP32 ones by name
(`create_activation_matching`, plus tensors both graphs hold without a Q/DQ pair, as in a
dynamic or FP16 model) and compared (`compute_activation_error`, SQNR and cosine); weights too
(`create_weight_matching`). Each FP32 node gets:

- `sqnr_db`/`cosine`: its output in the quantized model vs FP32 (the error accumulated so far);
- `added_sqnr_db`: the SQNR its output would have if the noise this node adds were the only
  noise, from noise powers: NSR(output) - max NSR(inputs), NSR = 10^(-SQNR/10). The accumulated
  SQNR only falls with depth; the added one points at the node that costs most, and ranks;
- `qdq_sqnr_db` (the noise of its output's own Q/DQ), `weight_sqnr_db`, and kernel time in both
  models from ORT's profiler (`node_profile`).
"""

from __future__ import annotations

import logging
import math
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import onnx

from torchship.artifact import Artifact, Format
from torchship.calibration.isolate import LayerSpan, isolated_output_sqnr
from torchship.calibration.node_profile import NodeTimes, profile_nodes
from torchship.calibration.ort_quantize import quiet_ort
from torchship.data import DataSet, ShortBatch, open_data
from torchship.errors import ConfigError
from torchship.files import scratch_cwd
from torchship.onnx_io import onnx_io
from torchship.onnx_scopes import NodeOrigin, node_origin, origins_by_tensor
from torchship.runtimes.base import get_runner
from torchship.specs import InputSpec, random_feeds

__all__ = [
    "DEFAULT_SAMPLES",
    "LayerReport",
    "LayerRow",
    "compare_files",
    "feeds_for_report",
    "layer_report",
]

log = logging.getLogger(__name__)

#: Samples compared by default: every intermediate tensor of both models is held for them.
DEFAULT_SAMPLES = 32
_EPS = float(np.finfo(np.float32).eps)
_SUMMARY_KEYS = ("node", "op_type", "module", "alone_sqnr_db", "added_sqnr_db", "sqnr_db", "cosine")


@dataclass(frozen=True)
class LayerRow:
    """One FP32 node: its error in the quantized model and its kernel time in both."""

    origin: NodeOrigin
    tensor: str
    sqnr_db: float | None = None
    cosine: float | None = None
    added_sqnr_db: float | None = None
    qdq_sqnr_db: float | None = None
    weight_sqnr_db: float | None = None
    fp32_us: float | None = None
    quant_us: float | None = None
    qdq_us: float | None = None
    #: Other FP32 nodes whose outputs the quantized model does not hold, merged into this row.
    fused: tuple[str, ...] = ()
    #: The model's output SQNR (dB) when only this row's nodes are quantized (`isolate`).
    alone_sqnr_db: float | None = None
    #: Graph positions of the row's nodes (the main one and `fused`).
    members: tuple[int, ...] = ()

    def to_dict(self) -> dict:
        numbers = {
            "alone_sqnr_db": self.alone_sqnr_db,
            "sqnr_db": self.sqnr_db,
            "cosine": self.cosine,
            "added_sqnr_db": self.added_sqnr_db,
            "qdq_sqnr_db": self.qdq_sqnr_db,
            "weight_sqnr_db": self.weight_sqnr_db,
            "fp32_us": self.fp32_us,
            "quant_us": self.quant_us,
            "qdq_us": self.qdq_us,
        }
        rounded = {k: (None if v is None else round(v, 4)) for k, v in numbers.items()}
        return {**self.origin.to_dict(), "depth": self.origin.index, "tensor": self.tensor,
                "fused": list(self.fused), **rounded}  # fmt: skip


@dataclass(frozen=True)
class LayerReport:
    """Rows ranked worst first: by the output SQNR with only that layer quantized, then (rows
    not isolated) by added SQNR; rows with neither last, in graph order."""

    fp32: str
    quantized: str
    rows: tuple[LayerRow, ...]
    outputs: dict[str, dict[str, float | None]]
    samples: int
    data: str
    random_inputs: bool
    other_us: dict[str, float]
    totals_us: dict[str, float]

    SCHEMA = "torchship.layers/1"

    def ranked(self) -> list[LayerRow]:
        return [r for r in self.rows if _rank_key(r) is not None]

    def to_dict(self) -> dict:
        return {
            "schema": self.SCHEMA,
            "fp32": self.fp32,
            "quantized": self.quantized,
            "samples": self.samples,
            "data": self.data,
            "random_inputs": self.random_inputs,
            "ranking": "alone_sqnr_db ascending (the model's output SQNR when only that layer "
            "is quantized), then added_sqnr_db (the SQNR a node's output would have if the noise "
            "it adds were the only noise)",
            "outputs": self.outputs,
            "layers": [r.to_dict() for r in self.rows],
            "latency_us": {
                **{k: round(v, 2) for k, v in self.totals_us.items()},
                "other": {k: round(v, 2) for k, v in self.other_us.items()},
            },
        }

    def summary(self, *, top: int = 5) -> dict:
        """What a quantize report carries: the outputs' error and the worst `top` layers."""
        return {
            "samples": self.samples,
            "random_inputs": self.random_inputs,
            "outputs": self.outputs,
            "worst": [{k: r.to_dict()[k] for k in _SUMMARY_KEYS} for r in self.ranked()[:top]],
            "latency_us": {k: round(v, 2) for k, v in self.totals_us.items()},
        }


def feeds_for_report(
    data: DataSet | None, inputs: Sequence[InputSpec], *, samples: int | None, seed: int = 0
) -> tuple[list[dict[str, np.ndarray]], str, bool]:
    """Up to `samples` samples (default 32) as feed batches, a description, and whether they
    are random inputs (when `data` is None: a last resort, as the report then says)."""
    limit = samples or DEFAULT_SAMPLES
    if data is None:
        batch = min(limit, 8)
        fixed = [s for s in inputs if s.shape and 0 not in s.dynamic]
        if fixed:
            batch = fixed[0].shape[0]
        count = max(1, limit // batch)
        feeds = [random_feeds(inputs, seed=seed + i, batch=batch) for i in range(count)]
        return feeds, f"{count * batch} random inputs (seed {seed})", True
    feeds, taken = [], 0
    for batch in data.batches(short=ShortBatch.PAD):
        room = limit - taken
        keep = batch.size if data.fixed_batch else min(batch.size, room)
        feeds.append({k: v[:keep] for k, v in batch.feeds.items()})
        taken += min(keep, batch.samples)
        if taken >= limit:
            break
    return feeds, f"{taken} samples of {data.name}", False


def layer_report(
    fp32: Path,
    quantized: Path,
    feeds: Sequence[Mapping[str, np.ndarray]],
    *,
    scratch: Path,
    data: str = "",
    random_inputs: bool = False,
    profile: bool = True,
    threads: int | None = None,
    isolate: bool = True,
    isolate_budget_s: float = 60.0,
) -> LayerReport:
    """Compare `quantized` with its FP32 source on `feeds` node by node; with `isolate`, also
    quantize each layer alone (within `isolate_budget_s`). Scratch files (augmented models,
    profiler traces) go to `scratch` only."""
    fp32_copy, quant_copy = _copy(fp32, scratch / "fp32.onnx"), _copy(quantized, scratch / "q.onnx")
    graph = onnx.load(str(fp32_copy), load_external_data=False).graph
    tensors = origins_by_tensor(graph)
    errors, float_tensors = _activation_errors(fp32_copy, quant_copy, feeds, scratch)
    errors = _drop_folded_qdq(errors, graph, onnx.load(str(quant_copy)).graph)
    weights, dequantized = _weight_errors(fp32_copy, quant_copy, graph)
    nodes = {o.node: o for o in tensors.values()}
    times = fp32_times = None
    if profile:
        times = profile_nodes(quant_copy, feeds[0], nodes=nodes, tensors=tensors, scratch=scratch,
                              threads=threads)  # fmt: skip
        fp32_times = profile_nodes(fp32_copy, feeds[0], nodes=nodes, tensors=tensors,
                                   scratch=scratch, threads=threads)  # fmt: skip
    rows = _rows(graph, errors, float_tensors, weights, times, fp32_times)
    if isolate:
        rows = _isolate(rows, fp32_copy, quant_copy, dequantized, feeds, scratch, isolate_budget_s)
    outputs = {
        o.name: {"sqnr_db": _round(errors[o.name][0]), "cosine": _round(errors[o.name][1])}
        for o in graph.output
        if o.name in errors
    }
    totals = {}
    if times is not None and fp32_times is not None:
        totals = {"fp32": fp32_times.total_us, "quantized": times.total_us}
    return LayerReport(
        fp32=str(fp32), quantized=str(quantized), rows=_ranked(rows), outputs=outputs,
        samples=sum(len(next(iter(f.values()))) for f in feeds), data=data,
        random_inputs=random_inputs, other_us=dict(times.other_us) if times else {},
        totals_us=totals,
    )  # fmt: skip


def _isolate(rows, fp32: Path, quant: Path, weights, feeds, scratch: Path, budget_s: float):
    """Rows with `alone_sqnr_db`: the worst-looking (lowest added SQNR) are isolated first, so
    that a time budget cuts off the least suspicious."""
    order = sorted((r for r in rows if r.sqnr_db is not None),
                   key=lambda r: (r.added_sqnr_db is None, r.added_sqnr_db or 0.0))  # fmt: skip
    spans = [LayerSpan(r.origin.node, r.members, r.tensor) for r in order]
    alone = isolated_output_sqnr(
        onnx.load(str(fp32)), onnx.load(str(quant)).graph, weights, spans, feeds,
        scratch=scratch, budget_s=budget_s,
    )  # fmt: skip
    return [replace(r, alone_sqnr_db=_round(alone.get(r.origin.node))) for r in rows]


def _copy(src: Path, dst: Path) -> Path:
    # ORT's helpers write `<name>-inferred.onnx` beside the model they read: never the user's.
    onnx.save(onnx.load(str(src)), str(dst))
    return dst


#: tensor -> (accumulated SQNR dB, cosine, own Q/DQ SQNR dB or None)
Errors = dict[str, tuple[float, float, float | None]]


def _activation_errors(
    fp32: Path, quantized: Path, feeds, scratch: Path
) -> tuple[Errors, set[str]]:
    """Errors by tensor, and the FP32 model's float tensors (what could be compared)."""
    from onnxruntime.quantization.qdq_loss_debug import (
        collect_activations,
        compute_activation_error,
        create_activation_matching,
        modify_model_output_intermediate_tensors,
    )

    acts = {}
    for name, path in (("fp32", fp32), ("quantized", quantized)):
        augmented = scratch / f"{name}-augmented.onnx"
        with quiet_ort(), scratch_cwd("torchship-layers-"):
            modify_model_output_intermediate_tensors(str(path), str(augmented))
            acts[name] = collect_activations(str(augmented), [dict(f) for f in feeds])
        augmented.unlink()
    float_acts, quant_acts = acts["fp32"], acts["quantized"]
    matching = create_activation_matching(quant_acts, float_acts)
    # tensors both graphs hold without a Q/DQ pair (float ops, dynamic INT8, FP16): compared
    # as they are, with no Q/DQ of their own
    for name, values in quant_acts.items():
        if name not in matching and name in float_acts:
            matching[name] = {"pre_qdq": values, "post_qdq": values, "float": float_acts[name],
                              "plain": True}  # fmt: skip
    matching = {k: v for k, v in matching.items() if "float" in v}
    sqnr = compute_activation_error(matching)
    cosine = compute_activation_error(matching, err_func=_cosine)
    errors = {
        name: (
            sqnr[name]["xmodel_err"],
            cosine[name]["xmodel_err"],
            None if matching[name].get("plain") else sqnr[name]["qdq_err"],
        )
        for name in matching
    }
    return errors, set(float_acts)


def _drop_folded_qdq(errors: Errors, fp32: onnx.GraphProto, quant: onnx.GraphProto) -> Errors:
    """Forget the own-Q/DQ SQNR of tensors another op computes in the quantized model: where
    ORT folded a Relu into the Q/DQ after its Conv, the tensor before that Q/DQ is the Conv's
    unclipped output and its `qdq_err` measures the clipping, not the rounding."""
    fp32_ops = {o: n.op_type for n in fp32.node for o in n.output}
    quant_ops = {o: n.op_type for n in quant.node for o in n.output}
    return {
        name: (sqnr, cosine, qdq if fp32_ops.get(name) == quant_ops.get(name) else None)
        for name, (sqnr, cosine, qdq) in errors.items()
    }


def _cosine(x: Sequence[np.ndarray], y: Sequence[np.ndarray]) -> float:
    # float32 BLAS dots: float64 copies of every activation cost more than the rest together
    left = np.concatenate([np.asarray(a, np.float32).ravel() for a in x])
    right = np.concatenate([np.asarray(a, np.float32).ravel() for a in y])
    with np.errstate(all="ignore"):
        dots = [float(np.dot(a, b)) for a, b in ((left, left), (right, right), (left, right))]
    if not all(math.isfinite(d) for d in dots):  # float32 overflow (masked -inf scores, ...)
        finite = np.isfinite(left) & np.isfinite(right)
        a, b = left[finite].astype(np.float64), right[finite].astype(np.float64)
        dots = [float(np.dot(a, a)), float(np.dot(b, b)), float(np.dot(a, b))]
    norms = math.sqrt(dots[0]) * math.sqrt(dots[1])
    if norms == 0:
        return 1.0 if np.array_equal(left, right) else 0.0
    return max(-1.0, min(1.0, dots[2] / norms))


def _weight_errors(
    fp32: Path, quantized: Path, graph: onnx.GraphProto
) -> tuple[dict[str, float], dict[str, np.ndarray]]:
    """Weight SQNR (dB) by the FP32 node that reads the weight, and the dequantized weights
    by name (in the FP32 initializer's dtype)."""
    from onnxruntime.quantization.qdq_loss_debug import compute_weight_error, create_weight_matching

    with quiet_ort(), scratch_cwd("torchship-layers-"):
        matching = create_weight_matching(str(fp32), str(quantized))
    # ORT subtracts the zero point in the stored dtype: uint8 weights (an embedding table
    # quantized like an activation) wrap around; dequantize those pairs again in int32
    exact = _dequantized_weights(onnx.load(str(quantized)).graph)
    for name, pair in matching.items():
        if name in exact:
            pair["dequantized"] = exact[name]
        # scalar weights come back as numpy scalars, which ORT's SQNR cannot take
        pair["float"] = np.atleast_1d(np.asarray(pair["float"]))
        pair["dequantized"] = np.atleast_1d(np.asarray(pair["dequantized"]))
    errors = compute_weight_error(matching)
    by_node: dict[str, float] = {}
    for node in graph.node:
        found = [errors[i] for i in node.input if i in errors]
        if found:
            by_node[node.name] = min(found)
    dequantized = {
        name: np.asarray(m["dequantized"]).astype(np.asarray(m["float"]).dtype)
        for name, m in matching.items()
    }
    return by_node, dequantized


def _dequantized_weights(graph: onnx.GraphProto) -> dict[str, np.ndarray]:
    """(q - zero point) * scale of every DequantizeLinear of a constant, by the float weight's
    name (ORT names the integer one `<weight>_quantized`)."""
    constants = {i.name: i for i in graph.initializer}
    out: dict[str, np.ndarray] = {}
    for node in graph.node:
        if node.op_type != "DequantizeLinear" or node.input[0] not in constants:
            continue
        if not node.input[0].endswith("_quantized") or node.input[1] not in constants:
            continue
        values = onnx.numpy_helper.to_array(constants[node.input[0]]).astype(np.int64)
        scale = onnx.numpy_helper.to_array(constants[node.input[1]]).astype(np.float64)
        zero = np.zeros_like(scale, dtype=np.int64)
        if len(node.input) > 2 and node.input[2] in constants:
            zero = onnx.numpy_helper.to_array(constants[node.input[2]]).astype(np.int64)
        axis = next((a.i for a in node.attribute if a.name == "axis"), 1)
        if scale.size > 1:
            shape = [1] * values.ndim
            shape[axis] = -1
            scale, zero = scale.reshape(shape), zero.reshape(shape)
        dequantized = ((values - zero) * scale).astype(np.float32)
        out[node.input[0].removesuffix("_quantized")] = dequantized
    return out


_WEIGHT_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")


def _rows(
    graph: onnx.GraphProto,
    errors: Errors,
    float_tensors: set[str],
    weights: Mapping[str, float],
    times: NodeTimes | None,
    fp32_times: NodeTimes | None,
) -> list[LayerRow]:
    """One row per node whose output both models hold. Nodes whose output the quantized model
    lacks (ORT folds a Relu into the Q/DQ of its Conv) join the row of the compared tensor
    downstream, named after the weighted node among them."""
    producers = {o: (i, n) for i, n in enumerate(graph.node) for o in n.output if o}
    skip = {i.name for i in graph.initializer}
    group = _Grouping(producers, errors, skip, float_tensors)
    rows, covered = [], set()
    for index, node in enumerate(graph.node):
        tensor = next((o for o in node.output if o in errors), None)
        if tensor is None:
            continue
        members = sorted({index, *group.hidden_ancestors(node)})
        covered.update(members)
        nodes = [graph.node[i] for i in members]
        main = next((n for n in nodes if n.op_type in _WEIGHT_OPS), node)
        sqnr, cosine, qdq = errors[tensor]
        inputs = [group.upstream_nsr(i) for i in node.input if i and i not in skip]
        rows.append(
            LayerRow(
                node_origin(main, members[nodes.index(main)]), tensor, _round(sqnr),
                _round(cosine), _round(_added_sqnr(sqnr, inputs)), _round(qdq),
                _round(min((weights[n.name] for n in nodes if n.name in weights), default=None)),
                fp32_us=_sum_time(fp32_times, nodes), quant_us=_sum_time(times, nodes),
                qdq_us=_sum_qdq(times, nodes), fused=tuple(n.name for n in nodes if n is not main),
                members=tuple(members),
            )
        )  # fmt: skip
    for index, node in enumerate(graph.node):  # the rest: time only
        if index not in covered:
            rows.append(LayerRow(node_origin(node, index), node.output[0] if node.output else "",
                                 members=(index,),
                                 fp32_us=_sum_time(fp32_times, [node]),
                                 quant_us=_sum_time(times, [node])))  # fmt: skip
    return rows


class _Grouping:
    """Walks from a node to the compared tensors above it, through tensors not compared."""

    def __init__(self, producers, errors: Errors, skip: set[str], floats: set[str]) -> None:
        self.producers, self.errors, self.skip, self.floats = producers, errors, skip, floats
        self._nsr: dict[str, float] = {}

    def upstream_nsr(self, tensor: str) -> float:
        """Noise-to-signal power of `tensor`, or of the compared tensors it is computed from."""
        if tensor in self.errors:
            return _nsr(self.errors[tensor][0])
        if tensor in self._nsr:
            return self._nsr[tensor]
        self._nsr[tensor] = 0.0  # cycles cannot happen in ONNX; this guards the recursion
        found = self.producers.get(tensor)
        if found is not None:
            inputs = [i for i in found[1].input if i and i not in self.skip]
            self._nsr[tensor] = max((self.upstream_nsr(i) for i in inputs), default=0.0)
        return self._nsr[tensor]

    def hidden_ancestors(self, node: onnx.NodeProto) -> set[int]:
        """Indices of the nodes above `node` whose outputs are not compared."""
        seen: set[int] = set()
        stack = [i for i in node.input if i and i not in self.skip]
        while stack:
            tensor = stack.pop()
            found = self.producers.get(tensor)
            # only float tensors the quantized model lacks: not shape arithmetic
            if tensor in self.errors or tensor not in self.floats or found is None:
                continue
            if found[0] in seen:
                continue
            seen.add(found[0])
            stack.extend(i for i in found[1].input if i and i not in self.skip)
        return seen


def _sum_time(times: NodeTimes | None, nodes: Sequence[onnx.NodeProto]) -> float | None:
    if times is None:
        return None
    found = [times.compute_us[n.name] for n in nodes if n.name in times.compute_us]
    return sum(found) if found else None


def _sum_qdq(times: NodeTimes | None, nodes: Sequence[onnx.NodeProto]) -> float | None:
    if times is None:
        return None
    found = [times.qdq_us[n.name] for n in nodes if n.name in times.qdq_us]
    return sum(found) if found else None


def _added_sqnr(out_db: float, inputs_nsr: Sequence[float]) -> float | None:
    """SQNR (dB) of the noise power a node adds to the noise-to-signal powers of its inputs;
    None when it adds none (it may remove some: a Relu clips negative noise, a pool averages)."""
    added = _nsr(out_db) - max(inputs_nsr, default=0.0)
    return None if added <= _EPS * _EPS else -10.0 * math.log10(added)


def _nsr(db: float) -> float:
    return 10.0 ** (-db / 10.0)


def _round(value: float | None) -> float | None:
    if value is None or not math.isfinite(value):
        return None
    return round(float(value), 4)


def _rank_key(row: LayerRow) -> tuple[int, float] | None:
    if row.alone_sqnr_db is not None:
        return (0, row.alone_sqnr_db)
    if row.added_sqnr_db is not None:
        return (1, row.added_sqnr_db)
    return None


def _ranked(rows: list[LayerRow]) -> tuple[LayerRow, ...]:
    scored = sorted((r for r in rows if _rank_key(r) is not None), key=_rank_key)
    rest = [r for r in rows if _rank_key(r) is None]
    return (*scored, *rest)


def compare_files(
    fp32: str | Path,
    quantized: str | Path,
    *,
    data: str | Path | None = None,
    samples: int | None = None,
    seed: int = 0,
    profile: bool = True,
    isolate: bool = True,
    threads: int | None = None,
) -> LayerReport:
    """`layer_report` for two ONNX files, on `data` (any torchship data source) or, without
    it, random inputs. ModelLoadError/ConfigError for unreadable files or mismatched inputs."""
    source, target = Artifact.open(fp32), Artifact.open(quantized)
    for artifact in (source, target):
        if artifact.format is not Format.ONNX:
            raise ConfigError(f"{artifact.path}: debug quantize compares ONNX models")
    names = {s.name for s in onnx_io(target.path)[0]}
    if names != {s.name for s in source.inputs}:
        raise ConfigError(
            f"{target.path}: takes inputs {sorted(names)}, {source.path.name} takes "
            f"{sorted(s.name for s in source.inputs)}; give a quantized model of the FP32 one"
        )
    for artifact in (source, replace(target, inputs=source.inputs)):
        with get_runner("ort-cpu")(artifact):  # ModelLoadError now, with the file's name
            pass
    dataset = None if data is None else open_data(data, inputs=source.inputs, seed=seed)
    feeds, described, random_inputs = feeds_for_report(
        dataset, source.inputs, samples=samples, seed=seed
    )
    with tempfile.TemporaryDirectory(prefix="torchship-layers-") as tmp:
        return layer_report(
            source.path, target.path, feeds, scratch=Path(tmp), data=described,
            random_inputs=random_inputs, profile=profile, isolate=isolate, threads=threads,
        )  # fmt: skip
