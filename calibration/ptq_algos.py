"""PTQ algorithms that win INT8 accuracy back before any node falls back to FP32.

Cross-layer equalization (CLE; Nagel et al. 2019, "Data-Free Quantization"): for two convs in a
row (through ReLU/ReLU6, depthwise included) scale output channel i of the first by 1/s_i and
input channel i of the second by s_i, s_i = sqrt(r1_i * r2_i) / r2_i, so both have the per-channel
weight range sqrt(r1_i * r2_i): per-tensor weight quantization (the TensorRT preset) then wastes
less of its range on one wide channel. It is function-preserving: ReLU(x / s) = ReLU(x) / s for
s > 0, and ReLU6 becomes ReLU followed by a per-channel Min(6 / s_i).

Bias correction (Nagel et al. 2019, section 4.2): quantized weights shift each conv/gemm output
by E[W_q x] - E[W x]; measured per output channel on calibration inputs (FP32 activations) and
subtracted from the bias before quantizing again.

Both run on ORT's pre-processed FP32 graph (BatchNorm folded). `Variants` holds the graphs and
calibration ranges per algorithm set; the accuracy-budget loop picks one (quantize.py).
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper

from torchship.calibration import ort_quantize
from torchship.calibration.accuracy import Accuracy
from torchship.calibration.calibrators import METHODS, compute_ranges
from torchship.calibration.regions import Graph
from torchship.data import DataSet, ShortBatch
from torchship.errors import ConfigError

__all__ = ["ALGOS", "parse_algos", "equalize", "bias_shifts", "apply_bias_shifts", "Variants"]

log = logging.getLogger(__name__)

ALGOS = ("cle", "bias-correction")
_CLE_ROUNDS = 6
_BIAS_BATCHES = 4
_POSITIVE_ACTS = ("Relu", "Clip")


def parse_algos(value) -> tuple[str, ...]:
    """`cle,bias-correction` (or a sequence) -> a checked, ordered tuple; "none" or "" -> ()."""
    items = value.split(",") if isinstance(value, str) else list(value)
    names = [str(i).strip().lower().replace("_", "-") for i in items if str(i).strip()]
    if names in (["none"], []):
        return ()
    bad = [n for n in names if n not in ALGOS]
    if bad:
        raise ConfigError(f"--ptq-algos {','.join(bad)}: valid: {', '.join(ALGOS)}, none")
    return tuple(a for a in ALGOS if a in names)


# --- cross-layer equalization --------------------------------------------------------------------


def _pairs(g: Graph) -> list[tuple[onnx.NodeProto, onnx.NodeProto | None, onnx.NodeProto]]:
    """(conv1, activation or None, conv2) with nothing else reading conv1's or the act's output."""
    found = []
    for conv1 in g.nodes:
        if conv1.op_type != "Conv" or g.weight(conv1) is None:
            continue
        nxt = g.only_consumer(conv1.output[0])
        act = None
        if nxt is not None and nxt.op_type in _POSITIVE_ACTS and _relu_like(g, nxt):
            act, nxt = nxt, g.only_consumer(nxt.output[0])
        if nxt is None or nxt.op_type != "Conv" or nxt.input[0] != (act or conv1).output[0]:
            continue
        w2 = g.weight(nxt)
        group = g.attr(nxt, "group", 1)
        channels = g.weight(conv1).shape[0]
        if w2 is None or not (group == 1 or (group == channels and w2.shape[1] == 1)):
            continue
        found.append((conv1, act, nxt))
    return found


def _relu_like(g: Graph, node: onnx.NodeProto) -> bool:
    """Relu, or Clip(0, max) with constant bounds (ReLU6)."""
    if node.op_type == "Relu":
        return True
    bounds = [g.initializers.get(name) for name in node.input[1:3]]
    if len(bounds) != 2 or any(b is None for b in bounds):
        return False
    low, high = (float(numpy_helper.to_array(b)) for b in bounds)
    return low == 0.0 and high > 0


def equalize(src: Path, dst: Path) -> dict:
    """CLE of every conv pair of `src` into `dst`; returns what it did (pairs, ranges)."""
    model = onnx.load(str(src))
    g = Graph(model)
    pairs = _pairs(g)
    shared = {name for name, n in _use_counts(model).items() if n > 1}
    pairs = [p for p in pairs if p[0].input[1] not in shared and p[2].input[1] not in shared]
    weights = {i.name: numpy_helper.to_array(i).astype(np.float64) for i in model.graph.initializer}
    caps: dict[str, np.ndarray] = {}  # ReLU6 outputs: their per-channel upper bound
    for conv1, act, _ in pairs:
        if act is not None and act.op_type == "Clip":
            high = float(weights[act.input[2]])
            caps[act.name] = np.full(weights[conv1.input[1]].shape[0], high)
    before = [_pair_spread(weights, c1, c2) for c1, _, c2 in pairs]
    for _ in range(_CLE_ROUNDS):  # a conv in two pairs moves again: iterate to a fixed point
        for pair in pairs:
            _equalize_pair(weights, caps, *pair)
    after = [_pair_spread(weights, c1, c2) for c1, _, c2 in pairs]
    changed = {n for c1, _, c2 in pairs for n in (c1.input[1], c2.input[1])}
    changed |= {c1.input[2] for c1, _, _ in pairs if len(c1.input) > 2 and c1.input[2]}
    for init in model.graph.initializer:
        if init.name in changed:
            dtype = numpy_helper.to_array(init).dtype
            init.CopyFrom(numpy_helper.from_array(weights[init.name].astype(dtype), init.name))
    _relu6_to_relu_min(model, g, caps)
    onnx.save(model, str(dst))
    return {
        "pairs": len(pairs),
        "relu6_rewritten": len(caps),
        "mean_channel_range_spread_before": round(float(np.mean(before)), 4) if before else None,
        "mean_channel_range_spread_after": round(float(np.mean(after)), 4) if after else None,
    }


def _equalize_pair(weights: dict, caps: dict, conv1, act, conv2) -> None:
    """Scale conv1's output channels by 1/s and conv2's input channels by s (in `weights`)."""
    scale = _scales(weights, conv1, conv2)
    w1 = weights[conv1.input[1]]
    weights[conv1.input[1]] = w1 / scale.reshape(-1, *([1] * (w1.ndim - 1)))
    if len(conv1.input) > 2 and conv1.input[2]:
        weights[conv1.input[2]] = weights[conv1.input[2]] / scale
    w2 = weights[conv2.input[1]]
    if _group(conv2) == 1:
        weights[conv2.input[1]] = w2 * scale.reshape(1, -1, *([1] * (w2.ndim - 2)))
    else:  # depthwise: input channel i is output channel i
        weights[conv2.input[1]] = w2 * scale.reshape(-1, *([1] * (w2.ndim - 1)))
    if act is not None and act.name in caps:
        caps[act.name] = caps[act.name] / scale


def _use_counts(model: onnx.ModelProto) -> dict[str, int]:
    counts: dict[str, int] = {}
    for node in model.graph.node:
        for name in node.input:
            counts[name] = counts.get(name, 0) + 1
    return counts


def channel_ranges(w: np.ndarray, *, axis: int) -> np.ndarray:
    """max |w| per channel along `axis`."""
    other = tuple(i for i in range(w.ndim) if i != axis)
    return np.abs(w).max(axis=other)


def _input_ranges(weights, conv2) -> np.ndarray:
    w2 = weights[conv2.input[1]]
    depthwise = w2.shape[1] == 1 and _group(conv2) > 1
    return channel_ranges(w2, axis=0 if depthwise else 1)


def _group(node) -> int:
    for a in node.attribute:
        if a.name == "group":
            return a.i
    return 1


def _scales(weights, conv1, conv2) -> np.ndarray:
    r1 = channel_ranges(weights[conv1.input[1]], axis=0)
    r2 = _input_ranges(weights, conv2)
    ok = (r1 > 0) & (r2 > 0)
    scale = np.ones_like(r1)
    scale[ok] = np.sqrt(r1[ok] * r2[ok]) / r2[ok]
    return scale


def _pair_spread(weights, conv1, conv2) -> float:
    """max/min of per-channel ranges over both convs: 1.0 would be perfectly even."""
    r = np.concatenate(
        [channel_ranges(weights[conv1.input[1]], axis=0), _input_ranges(weights, conv2)]
    )
    r = r[r > 0]
    return float(r.max() / r.min()) if len(r) else 1.0


def _relu6_to_relu_min(model: onnx.ModelProto, g: Graph, caps: dict[str, np.ndarray]) -> None:
    """Clip(x, 0, 6) after a scaled conv -> Min(Relu(x), 6 / s) per channel (exactly equal)."""
    nodes = list(model.graph.node)
    for index, node in enumerate(nodes):
        if node.name not in caps:
            continue
        cap_name = f"{node.name}_cle_cap"
        relu_out = f"{node.output[0]}_cle_relu"
        cap = caps[node.name].astype(np.float32).reshape(1, -1, 1, 1)
        model.graph.initializer.append(numpy_helper.from_array(cap, cap_name))
        relu = helper.make_node("Relu", [node.input[0]], [relu_out], name=f"{node.name}_relu")
        low = helper.make_node("Min", [relu_out, cap_name], list(node.output), name=node.name)
        nodes[index] = [relu, low]
    flat = []
    for item in nodes:
        flat.extend(item if isinstance(item, list) else [item])
    del model.graph.node[:]
    model.graph.node.extend(flat)


# --- bias correction -----------------------------------------------------------------------------


def _dequantized_weights(quantized: Path) -> dict[str, np.ndarray]:
    """Conv/Gemm node name -> its weights as the QDQ model computes them (dequantized)."""
    model = onnx.load(str(quantized))
    g = Graph(model)
    out = {}
    for node in g.nodes:
        if node.op_type not in ("Conv", "Gemm") or len(node.input) < 2:
            continue
        dq = g.producer.get(node.input[1])
        if dq is None or dq.op_type != "DequantizeLinear" or dq.input[0] not in g.initializers:
            continue
        q = numpy_helper.to_array(g.initializers[dq.input[0]]).astype(np.float64)
        scale = numpy_helper.to_array(g.initializers[dq.input[1]]).astype(np.float64)
        zero = 0.0
        if len(dq.input) > 2 and dq.input[2] in g.initializers:
            zero = numpy_helper.to_array(g.initializers[dq.input[2]]).astype(np.float64)
        axis = g.attr(dq, "axis", 1)
        if np.ndim(scale):
            shape = [1] * q.ndim
            shape[axis] = -1
            scale = scale.reshape(shape)
            zero = np.reshape(zero, shape) if np.ndim(zero) else zero
        out[node.name] = (q - zero) * scale
    return out


def bias_shifts(
    fp32: Path, quantized: Path, data: DataSet, *, batches: int = _BIAS_BATCHES
) -> dict[str, np.ndarray]:
    """Per quantized Conv/Gemm: E[W_q x] - E[W x] per output channel, x the FP32 input on data."""
    import onnxruntime
    import torch
    import torch.nn.functional as F

    model = onnx.load(str(fp32))
    g = Graph(model)
    deq = _dequantized_weights(quantized)
    targets = [n for n in g.nodes if n.name in deq and g.weight(n) is not None]
    targets = [n for n in targets if _supported(g, n)]
    if not targets:
        return {}
    known = {o.name for o in model.graph.output}
    for name in dict.fromkeys(n.input[0] for n in targets):
        if name not in known:
            model.graph.output.append(
                helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None)
            )
    session = onnxruntime.InferenceSession(
        model.SerializeToString(), providers=["CPUExecutionProvider"]
    )
    names = [o.name for o in session.get_outputs()]
    sums: dict[str, np.ndarray] = {}
    seen = 0
    for batch in itertools.islice(data.batches(short=ShortBatch.PAD), batches):
        values = dict(zip(names, session.run(None, batch.feeds), strict=True))
        for node in targets:
            delta = torch.from_numpy(deq[node.name] - g.weight(node).astype(np.float64))
            x = torch.from_numpy(values[node.input[0]].astype(np.float64))
            if node.op_type == "Conv":
                y = _conv(g, node, x, delta, F)
                mean = y.mean(dim=[d for d in range(y.ndim) if d != 1])
            else:
                trans_b = g.attr(node, "transB", 0)
                y = x @ (delta.T if trans_b else delta)
                mean = y.mean(dim=0)
            sums[node.name] = sums.get(node.name, 0) + mean.numpy() * len(x)
        seen += batch.size
    return {name: total / max(seen, 1) for name, total in sums.items()}


def _supported(g: Graph, node) -> bool:
    if node.op_type == "Gemm":
        return g.attr(node, "transA", 0) == 0 and g.weight(node).ndim == 2
    pad = g.attr(node, "auto_pad", b"NOTSET")
    return (pad in (b"NOTSET", "NOTSET")) and g.weight(node).ndim == 4


def _conv(g: Graph, node, x, weight, F):
    pads = list(g.attr(node, "pads", [0, 0, 0, 0]))
    x = F.pad(x, (pads[1], pads[3], pads[0], pads[2]))
    return F.conv2d(
        x, weight,
        stride=tuple(g.attr(node, "strides", [1, 1])),
        dilation=tuple(g.attr(node, "dilations", [1, 1])),
        groups=g.attr(node, "group", 1),
    )  # fmt: skip


def apply_bias_shifts(
    src: Path, dst: Path, shifts: dict[str, np.ndarray], *, skip: Sequence[str] = ()
) -> int:
    """Write `src` with bias -= shift for each node in `shifts` but those in `skip` (kept FP32,
    they need no correction); a node without a bias gets one. Returns how many changed."""
    model = onnx.load(str(src))
    inits = {i.name: i for i in model.graph.initializer}
    skip = set(skip)
    changed = 0
    for node in model.graph.node:
        if node.name not in shifts or node.name in skip:
            continue
        shift = shifts[node.name]
        if len(node.input) > 2 and node.input[2] in inits:
            init = inits[node.input[2]]
            bias = numpy_helper.to_array(init).astype(np.float64)
            init.CopyFrom(numpy_helper.from_array((bias - shift).astype(np.float32), init.name))
        else:
            name = f"{node.name}_bias_corrected"
            model.graph.initializer.append(
                numpy_helper.from_array((-shift).astype(np.float32), name)
            )
            while len(node.input) < 2:
                node.input.append("")
            if len(node.input) == 2:
                node.input.append(name)
            else:
                node.input[2] = name
        changed += 1
    onnx.save(model, str(dst))
    return changed


# --- variants for the accuracy loop -------------------------------------------------------------


class Variants:
    """The FP32 graph (and its calibration ranges) per PTQ algorithm set, made on first use."""

    def __init__(self, pre: Path | None, calib: DataSet | None, tmp: Path | None, *, preset=None,
                 method: str = "minmax", ranges_cache: Path | None = None) -> None:  # fmt: skip
        self.pre, self.calib, self.tmp = pre, calib, tmp
        self.preset, self.method, self.ranges = preset, method, ranges_cache
        self.key: tuple[str, ...] = ()
        self._cle: tuple[Path, Path] | None = None
        self._shifts: dict[tuple[str, ...], dict] = {}
        self._corrected: dict[tuple, Path] = {}
        self.details: dict = {}

    @classmethod
    def none(cls) -> Variants:
        return cls(None, None, None)

    @property
    def available(self) -> bool:
        return self.pre is not None

    def source_for(self, excluded: tuple[str, ...]) -> tuple[Path, Path]:
        """(FP32 graph, ranges cache) to quantize for the current algorithm set."""
        source, ranges = self.pre, self.ranges
        if "cle" in self.key:
            source, ranges = self._equalized()
        if "bias-correction" in self.key:
            source = self._bias_corrected(source, ranges, excluded)
        return source, ranges

    def _equalized(self) -> tuple[Path, Path]:
        if self._cle is None:
            path = self.tmp / "cle.onnx"
            self.details["cle"] = equalize(self.pre, path)
            ranges = compute_ranges(
                path, self.calib, method=self.method, symmetric=self.preset.symmetric_activations
            )
            self._cle = (path, ort_quantize.save_ranges(ranges, self.tmp / "ranges-cle.json"))
        return self._cle

    def _bias_corrected(self, source: Path, ranges: Path, excluded: tuple[str, ...]) -> Path:
        base = ("cle",) if "cle" in self.key else ()
        if base not in self._shifts:
            probe = self.tmp / f"bias-probe{len(self._shifts)}.onnx"
            ort_quantize.quantize_static_qdq(
                source, probe, preset=self.preset, method=METHODS.get(self.method).ort_method(),
                ranges_cache=ranges,
            )  # fmt: skip
            shifts = bias_shifts(source, probe, self.calib)
            self._shifts[base] = shifts
            size = [float(np.mean(np.abs(s))) for s in shifts.values()]
            self.details["bias-correction"] = {
                "layers": len(shifts),
                "mean_abs_shift": round(float(np.mean(size)), 6) if size else 0.0,
            }
        key = (base, excluded)
        if key not in self._corrected:
            path = self.tmp / f"bias-corrected{len(self._corrected)}.onnx"
            apply_bias_shifts(source, path, self._shifts[base], skip=excluded)
            self._corrected[key] = path
        return self._corrected[key]

    def choose(
        self,
        evaluate: Callable[[tuple[str, ...]], Accuracy],
        *,
        within: Callable[[Accuracy], bool],
        loss: Callable[[Accuracy], float],
        requested: tuple[str, ...] | None,
    ) -> dict:
        """Set the algorithm set the fallback loop quantizes with; returns the report section.

        `requested` (from --ptq-algos/--cle/--bias-correction) is applied as given; None tries
        each set when plain INT8 misses the budget (`within`) and keeps the one with the lowest
        `loss` (the budget's metric, whatever it is).
        """
        tried = []

        def attempt(algos: tuple[str, ...]) -> Accuracy:
            self.key = algos
            accuracy = evaluate(())
            tried.append({
                "algos": list(algos), "metric": accuracy.metric,
                "value": round(accuracy.budget_value, 6), "drop": round(accuracy.drop, 4),
            })  # fmt: skip
            log.info("PTQ %s: %s %.4f", "+".join(algos) or "plain", accuracy.metric,
                     accuracy.budget_value)  # fmt: skip
            return accuracy

        plain = attempt(())
        if requested:
            attempt(requested)
            chosen = requested
        elif requested is None and not within(plain):
            options = [("cle",), ("bias-correction",), ("cle", "bias-correction")]
            losses = {algos: loss(attempt(algos)) for algos in options}
            best = min(losses, key=losses.get)
            chosen = best if losses[best] < loss(plain) else ()
        else:
            chosen = ()
        self.key = chosen
        return {"tried": tried, "chosen": list(chosen), "requested": requested, **self.details}
