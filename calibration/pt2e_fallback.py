"""The accuracy budget for PT2E INT8: keep the most sensitive modules in FP32 when INT8 misses it.

The same loop as the ONNX path (`calibration/fallback.py`: rank once, bisect how many of the
top-ranked to keep in FP32), over the modules whose convolutions and linear layers a PT2E
quantizer annotates. A trial re-annotates the captured graph without those modules, calibrates
and converts it, and scores it against FP32 eager: as the lowered file where the caller can
lower cheaply (XNNPACK), else the converted module in eager PyTorch. The ranking is one pass of
the fully quantized module: each weighted op's own error (its output against the float op on
the same noisy input with the FP32, BatchNorm-folded weights), as a noise-to-signal power ratio
(docs/design.md, "PT2E accuracy fallback").
"""

from __future__ import annotations

import collections
import copy
import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace

import numpy as np
import torch

from torchship.calibration.accuracy import Accuracy
from torchship.calibration.budget import BudgetOptions
from torchship.calibration.eager_check import EagerCheck, eager_check, eager_output
from torchship.calibration.fallback import (
    DEFAULT_MAX_FALLBACK_TIME_S,
    FallbackResult,
    fallback_loop,
)
from torchship.calibration.pt2e import module_path, quantize_graph
from torchship.data import DataSet
from torchship.loaded import LoadedModel, to_torch_inputs
from torchship.runtimes.evaluate import EvalOutputs

__all__ = ["quantizable_modules", "module_sensitivity", "quantize_within_budget"]

log = logging.getLogger(__name__)

#: module -> its first output on the eval data, as rows
Outputs = Callable[[torch.fx.GraphModule], np.ndarray]
#: The ops whose modules the fallback may keep in FP32 (where the quantizers put INT8 weights).
_WEIGHTED_OPS = {
    torch.ops.aten.conv1d.default,
    torch.ops.aten.conv2d.default,
    torch.ops.aten.conv3d.default,
    torch.ops.aten.linear.default,
}
#: Eval samples of the ranking pass, and how many run at a time.
_RANKING_SAMPLES, _RANKING_BATCH = 32, 4


def owner(node: torch.fx.Node) -> str | None:
    """The innermost module that made `node` (its qualified name), None at the top level."""
    stack = node.meta.get("nn_module_stack")
    if not stack:
        return None
    return module_path(stack[next(reversed(stack))][0])


def quantizable_modules(graph: torch.fx.GraphModule) -> list[str]:
    """The modules of `graph`'s convolutions and linear layers, in graph order, each once."""
    names = (owner(n) for n in graph.graph.nodes if n.target in _WEIGHTED_OPS)
    return list(dict.fromkeys(name for name in names if name))


def module_sensitivity(
    graph: torch.fx.GraphModule,
    quantized: torch.fx.GraphModule,
    names: Sequence[str],
    batches: Iterable[Sequence[torch.Tensor]],
) -> dict[str, float]:
    """Module -> the error its weighted ops inject in `quantized` (higher: INT8 hurts it more).

    A node keeps its name through prepare and convert. Each weighted op's quantized output is
    compared with the float op applied to the same (already noisy) float input with the FP32
    weights, as a noise-to-signal power ratio: its own error, not the one it inherits. The FP32
    weights are `graph`'s with BatchNorm folded in, as `prepare_pt2e` folds it before
    annotating. The sums stream over `batches`; no activation outlives the op that reads it.
    """
    from torchao.quantization.pt2e.utils import _fuse_conv_bn_, _fuse_linear_bn_

    fused = copy.deepcopy(graph)
    _fuse_conv_bn_(fused)
    _fuse_linear_bn_(fused)
    plans = _plans(fused, quantized, set(names))
    sources = {plan.source for plan in plans.values()}
    sums = collections.defaultdict(lambda: [0.0, 0.0])  # op -> [noise, signal]

    class Scorer(torch.fx.Interpreter):
        def run_node(self, n):
            result = super().run_node(n)
            if n.name in sources:
                held[n.name] = result
            plan = plans.get(n.name)
            if plan is not None:
                want = plan.apply(held[plan.source])
                sums[n.name][0] += float((result.double() - want).pow(2).sum())
                sums[n.name][1] += float(want.pow(2).sum())
            return result

    with torch.no_grad():
        for feeds in batches:
            held: dict[str, torch.Tensor] = {}
            Scorer(quantized).run(*feeds)
    scores: dict[str, float] = {}
    for name, (noise, signal) in sums.items():
        nsr = noise / signal if signal > 0 else 0.0
        module = plans[name].module
        scores[module] = max(scores.get(module, 0.0), nsr)
    return scores


@dataclass(frozen=True)
class _Plan:
    """How to recompute one weighted op in float: its FP32 constants, from the fused graph."""

    module: str
    source: str  # the quantized graph's float tensor its input was quantized from
    target: object
    args: tuple
    kwargs: dict

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        return self.target(x.double(), *self.args, **self.kwargs)


def _plans(fused: torch.fx.GraphModule, quantized: torch.fx.GraphModule, names: set[str]):
    reference = {
        n.name: n for n in fused.graph.nodes if n.target in _WEIGHTED_OPS and owner(n) in names
    }
    fetch = torch.fx.Interpreter(fused).fetch_attr
    plans: dict[str, _Plan] = {}
    for node in quantized.graph.nodes:
        ref, source = reference.get(node.name), None
        if ref is not None:
            source = _float_source(node.args[0])
        if source is None:
            continue  # not a candidate, or kept in FP32 (its input is not quantized)
        args = []
        for a in ref.args[1:]:
            if isinstance(a, torch.fx.Node) and a.op != "get_attr":
                break  # a weight computed at run time: no FP32 constant to compare with
            args.append(fetch(a.target).double() if isinstance(a, torch.fx.Node) else a)
        else:
            plans[node.name] = _Plan(owner(ref), source.name, ref.target, tuple(args), ref.kwargs)
    return plans


def _float_source(arg: object) -> torch.fx.Node | None:
    """The float tensor a dequantize(quantize(x)) input was quantized from; None when `arg` is
    not quantized (a module kept in FP32)."""
    if not (isinstance(arg, torch.fx.Node) and "dequantize" in str(arg.target)):
        return None
    quant = arg.args[0]
    if not (isinstance(quant, torch.fx.Node) and "quantize" in str(quant.target)):
        return None
    source = quant.args[0]
    return source if isinstance(source, torch.fx.Node) else None


def quantize_within_budget(
    model: LoadedModel,
    graph: torch.fx.GraphModule,
    *,
    target: str,
    calib: DataSet,
    eval_data: Mapping[str, np.ndarray],
    max_drop: float,
    max_excluded: int | None = None,
    max_time_s: float | None = DEFAULT_MAX_FALLBACK_TIME_S,
    outputs: Outputs | None = None,
) -> tuple[torch.fx.GraphModule, FallbackResult]:
    """PT2E INT8 of `graph` whose top-1 drop on the labelled `eval_data` holds `max_drop`,
    keeping the fewest most sensitive modules in FP32 (the smallest passing configuration
    found in `max_time_s`, else the one that lost least).

    `outputs(module)` gives a trial's first output on `eval_data`; by default the converted
    module runs in eager PyTorch. A caller that can lower cheaply passes the lowered file's
    outputs instead (XNNPACK's kernels round otherwise than the eager quantize/dequantize ops:
    a trial passing in eager missed the budget as a `.pte` by a point)."""
    check = eager_check(model, eval_data, asked=BudgetOptions(metric="top1", max_drop=max_drop))
    names = quantizable_modules(graph)
    full: list[torch.fx.GraphModule] = []  # full INT8, kept for the ranking; trials are not

    def build(excluded: tuple[str, ...]) -> torch.fx.GraphModule:
        if not excluded and full:
            return full[0]
        quantized = quantize_graph(
            copy.deepcopy(graph), inputs=model.inputs, target=target, calib=calib,
            keep_fp32=excluded,
        )  # fmt: skip
        if not excluded:
            full.append(quantized)
        return quantized

    run = outputs or (lambda module: eager_output(replace(model, module=module), eval_data))

    def evaluate(excluded: tuple[str, ...]) -> Accuracy:
        return _accuracy(run(build(excluded)), check)

    def rank() -> dict[str, float]:
        return module_sensitivity(graph, build(()), names, _ranking_batches(model, eval_data))

    result = fallback_loop(
        [(name, "module") for name in names], evaluate, budget=check.budget, rank=rank,
        max_excluded=max_excluded, max_time_s=max_time_s,
    )  # fmt: skip
    if result.excluded:
        log.info("pt2e %s: %d modules kept in FP32: %s", target, len(result.excluded),
                 ", ".join(result.excluded))  # fmt: skip
    return build(result.excluded), result


def _ranking_batches(model: LoadedModel, data: Mapping[str, np.ndarray]):
    """The first `_RANKING_SAMPLES` eval samples, `_RANKING_BATCH` at a time, as torch inputs."""
    for start in range(0, _RANKING_SAMPLES, _RANKING_BATCH):
        feeds = {s.name: data[s.name][start : start + _RANKING_BATCH] for s in model.inputs}
        if len(next(iter(feeds.values()))) == 0:
            return
        yield to_torch_inputs(model.inputs, feeds)


def _accuracy(rows: np.ndarray, check: EagerCheck) -> Accuracy:
    outputs = EvalOutputs(
        rows.reshape(len(rows), -1).astype(np.float32, copy=False),
        check.reference.labels,
        sample_shape=check.reference.sample_shape,
    )
    return check.accuracy(outputs)
