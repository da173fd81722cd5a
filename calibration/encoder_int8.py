"""INT8 for transformer encoders: the fused graph, per-channel dynamic INT8, and static INT8
that keeps LayerNorm/Softmax/GELU in float, with SmoothQuant tried on calibration data.

Why (docs/design.md, "Measured facts that shaped this"): on a MiniLM-class encoder ORT's
`quantize_dynamic` defaults lose accuracy (per-tensor weights) and quantizing LayerNorm, Softmax
and GELU statically drops cosine to ~0.94; only the weight MatMuls (and the fused Attention's
packed QKV weights) need INT8 for the speed. Activation outlier channels are what remains:
SmoothQuant's α is chosen by measured cosine on the calibration data, and "off" stays a
candidate, so it is used only when it helps.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import onnx

from torchship.calibration import smoothquant
from torchship.calibration.ort_quantize import quiet_ort
from torchship.calibration.transformer_opt import OptimizeReport, optimize_encoder
from torchship.data import DataSet, ShortBatch
from torchship.errors import ConfigError, ExportError

__all__ = [
    "ALPHAS",
    "EncoderPlan",
    "FLOAT_REGION_OPS",
    "SmoothChoice",
    "float_regions_read_float",
    "parse_smoothquant",
    "prepare_encoder",
    "quantize_dynamic_encoder",
    "weight_matmuls",
    "smoothquant_search",
]

log = logging.getLogger(__name__)

#: α candidates of the search (small α moved outliers into per-channel weights badly on
#: MiniLM: α 0.3 gave cosine 0.89, α 0.7-0.8 gave 0.998).
ALPHAS = (0.5, 0.6, 0.7, 0.8, 0.9)
#: Calibration batches SmoothQuant reads for its activation maxima.
_MAX_BATCHES = 16
#: Ops static encoder INT8 keeps float, inputs included (quantizing them cost cosine 0.94).
FLOAT_REGION_OPS = frozenset(
    {"LayerNormalization", "SkipLayerNormalization", "SimplifiedLayerNormalization",
     "SkipSimplifiedLayerNormalization", "Softmax", "Gelu", "BiasGelu", "FastGelu"}
)  # fmt: skip


def parse_smoothquant(value: str | float | None) -> str | float:
    """`auto` (search α, keep it only if it helps), `off`, or a fixed α in (0, 1]."""
    if value is None:
        return "auto"
    if isinstance(value, str) and value.lower() in ("auto", "off"):
        return value.lower()
    try:
        alpha = float(value)
    except (TypeError, ValueError):
        raise ConfigError(
            f"--smoothquant {value!r}: valid: auto, off, or an alpha in (0, 1]"
        ) from None
    if not 0 < alpha <= 1:
        raise ConfigError(f"--smoothquant {value!r}: alpha must be in (0, 1]")
    return alpha


@dataclass
class EncoderPlan:
    """The graph to quantize and what was done to it."""

    path: Path
    optimizer: OptimizeReport
    smoothquant: dict = field(default_factory=dict)
    #: The fused vs unfused INT8 timing (dynamic INT8 keeps the faster graph).
    timing: dict = field(default_factory=dict)

    @property
    def encoder(self) -> bool:
        return self.optimizer.applied or "not an encoder" not in self.optimizer.reason

    def to_dict(self) -> dict:
        return {
            "optimizer": self.optimizer.to_dict(),
            "smoothquant": self.smoothquant,
            "timing": self.timing,
        }


def prepare_encoder(src: Path, tmp: Path, *, optimize: bool, attention: bool) -> EncoderPlan:
    """The optimized graph when ORT's optimizer applies, else `src` with the reason."""
    if not optimize:
        return EncoderPlan(Path(src), OptimizeReport(False, "turned off (--no-transformer-opt)"))
    dst = tmp / ("optimized.onnx" if attention else "optimized-noattn.onnx")
    report = optimize_encoder(Path(src), dst, attention=attention)
    if report.applied:
        fused = ", ".join(f"{k} {v}" for k, v in report.fusions.items())
        log.info("%s: transformer optimizer fused %s", Path(src).name, fused)
        return EncoderPlan(dst, report)
    log.info("%s: transformer optimizer skipped: %s", Path(src).name, report.reason)
    return EncoderPlan(Path(src), report)


def quantize_dynamic_encoder(src: Path, dst: Path, *, exclude: Sequence[str] = ()) -> None:
    """Dynamic INT8 with S8 per-channel weights of MatMul/Gemm and fused Attention
    (QAttention); contrib ops have no ONNX type inference, hence `DefaultTensorType`."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    try:
        with quiet_ort():
            quantize_dynamic(
                str(src),
                str(dst),
                op_types_to_quantize=["MatMul", "Gemm", "Attention"],
                per_channel=True,
                weight_type=QuantType.QInt8,
                nodes_to_exclude=list(exclude),
                extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},
            )
    except Exception as exc:
        raise ExportError(f"{src.name}: ORT dynamic quantization failed: {exc}") from exc


def weight_matmuls(path: Path) -> tuple[list[tuple[str, str]], list[str]]:
    """(name, op) of MatMul/Gemm/Attention nodes with a constant weight, and the names of
    MatMuls between two activations (Q·Kᵀ, softmax·V), which static encoder INT8 keeps float."""
    graph = onnx.load(str(path), load_external_data=False).graph
    weights = {t.name for t in graph.initializer}
    with_weight, between = [], []
    for node in graph.node:
        if node.op_type not in ("MatMul", "Gemm", "Attention") or not node.name:
            continue
        if len(node.input) > 1 and node.input[1] in weights:
            with_weight.append((node.name, node.op_type))
        elif node.op_type == "MatMul":
            between.append(node.name)
    return with_weight, between


def float_regions_read_float(path: Path) -> int:
    """Rewire the float-region ops of a QDQ file to read the float tensor, not its Q→DQ copy.

    ORT quantizes a tensor once for all its consumers: the LayerNorm output that feeds the
    Q/K/V MatMuls also reaches the residual SkipLayerNorm through the same DequantizeLinear,
    so the float region would see INT8 rounding. Returns the number of inputs rewired; Q/DQ
    nodes left without a consumer are dropped. Edits the graph only (external data stays).
    """
    model = onnx.load(str(path), load_external_data=False)
    graph = model.graph
    producer = {out: node for node in graph.node for out in node.output}
    rewired = 0
    for node in graph.node:
        if node.op_type not in FLOAT_REGION_OPS:
            continue
        for index, name in enumerate(node.input):
            dq = producer.get(name)
            if dq is None or dq.op_type != "DequantizeLinear":
                continue
            q = producer.get(dq.input[0])
            if q is not None and q.op_type == "QuantizeLinear":
                node.input[index] = q.input[0]
                rewired += 1
    if rewired:
        _drop_unused_qdq(graph)
        onnx.save(model, str(path))
    return rewired


def _drop_unused_qdq(graph) -> None:
    while True:
        used = {name for node in graph.node for name in node.input}
        used |= {out.name for out in graph.output}
        dead = [
            node for node in graph.node
            if node.op_type in ("QuantizeLinear", "DequantizeLinear")
            and not any(out in used for out in node.output)
        ]  # fmt: skip
        if not dead:
            return
        for node in dead:
            graph.node.remove(node)


@dataclass(frozen=True)
class SmoothChoice:
    """The graph SmoothQuant picked (`path`, None: the unsmoothed one) and the search table."""

    alpha: float | None
    path: Path | None
    table: tuple[dict, ...]
    reason: str = ""

    def to_dict(self) -> dict:
        return {
            "alpha": self.alpha,
            "used": self.path is not None,
            "reason": self.reason,
            "search": list(self.table),
        }


def smoothquant_search(
    src: Path,
    tmp: Path,
    calib: DataSet,
    *,
    setting: str | float,
    score: Callable[[Path], float],
) -> SmoothChoice:
    """Smooth `src` at each α (or the fixed one), score each graph (`score`: quantizes it and
    returns mean cosine vs FP32), and keep the best; "off" (α None) is scored too."""
    model = onnx.load(str(src))
    targets = smoothquant.smooth_targets(model)
    if not targets:
        return SmoothChoice(None, None, (), "no MatMul with a constant weight to smooth")
    feeds = []
    for batch in calib.batches(short=ShortBatch.PAD):
        feeds.append(batch.feeds)
        if len(feeds) >= _MAX_BATCHES:
            break
    maxima = smoothquant.activation_maxima(model, [t.activation for t in targets], feeds)
    alphas: tuple[float | None, ...] = (None, *ALPHAS) if setting == "auto" else (float(setting),)
    table, best = [], (float("-inf"), None, None)
    for alpha in alphas:
        path = src
        row: dict = {"alpha": alpha}
        if alpha is not None:
            smoothed, report = smoothquant.smooth(model, targets, maxima, alpha=alpha)
            path = tmp / f"smoothed-{alpha:g}.onnx"
            onnx.save(smoothed, str(path))
            row.update(report.to_dict())
        cosine = score(path)
        row["mean_cosine"] = round(cosine, 6)
        table.append(row)
        log.info("SmoothQuant alpha %s: mean cosine %.5f", alpha, cosine)
        if cosine > best[0]:
            best = (cosine, alpha, None if alpha is None else path)
    reason = "" if best[1] is not None else "no alpha beat the unsmoothed graph"
    return SmoothChoice(best[1], best[2], tuple(table), reason)
