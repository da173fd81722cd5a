"""The accuracy budget for PT2E INT8: keep the most sensitive modules in FP32 when INT8 misses it.

The same loop as the ONNX path (`calibration/fallback.py`: rank once, bisect how many of the
top-ranked to keep in FP32), over the modules whose convolutions and linear layers a PT2E
quantizer annotates. A trial re-annotates the captured graph without those modules, calibrates
and converts it, and scores the converted module in eager PyTorch against FP32 eager (its
quantize/dequantize ops compute what the lowered `.pte` or AOTInductor package does); only the
configuration kept is lowered. The ranking is one pass of the fully quantized module: the noise
each module's output adds over its input, as a noise-to-signal power ratio
(docs/design.md, "PT2E accuracy fallback").
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Mapping, Sequence
from dataclasses import replace

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
from torchship.calibration.pt2e import quantize_graph
from torchship.data import DataSet
from torchship.loaded import LoadedModel, to_torch_inputs
from torchship.runtimes.evaluate import EvalOutputs

__all__ = ["quantizable_modules", "module_sensitivity", "quantize_within_budget"]

log = logging.getLogger(__name__)

#: The ops whose modules the fallback may keep in FP32 (where the quantizers put INT8 weights).
_WEIGHTED_OPS = {
    torch.ops.aten.conv1d.default,
    torch.ops.aten.conv2d.default,
    torch.ops.aten.conv3d.default,
    torch.ops.aten.linear.default,
}
#: Eval samples of the ranking pass.
_RANKING_SAMPLES = 32


def owner(node: torch.fx.Node) -> str | None:
    """The innermost module that made `node` (its qualified name), None at the top level."""
    stack = node.meta.get("nn_module_stack")
    if not stack:
        return None
    fqn = stack[next(reversed(stack))][0]
    return fqn.split("@", 1)[0]  # split_repeated_calls marks each call "<fqn>@<node>"


def quantizable_modules(graph: torch.fx.GraphModule) -> list[str]:
    """The modules of `graph`'s convolutions and linear layers, in graph order, each once."""
    names = (owner(n) for n in graph.graph.nodes if n.target in _WEIGHTED_OPS)
    return list(dict.fromkeys(name for name in names if name))


def module_sensitivity(
    fp32: torch.fx.GraphModule,
    quantized: torch.fx.GraphModule,
    names: Sequence[str],
    feeds: Sequence[torch.Tensor],
) -> dict[str, float]:
    """Module -> the error its weighted ops inject in `quantized` (higher: INT8 hurts it more).

    A node keeps its name through prepare and convert. Each weighted op's quantized output is
    compared with the float op applied to the same (already noisy) float input with the FP32
    weights, as a noise-to-signal power ratio: its own error, not the error it inherits.
    """
    ops = {n.name: n for n in quantized.graph.nodes if n.target in _WEIGHTED_OPS}
    plans = {
        n.name: (n, _float_source(ops[n.name].args[0]))
        for n in fp32.graph.nodes
        if n.name in ops and owner(n) in names and _float_source(ops[n.name].args[0]) is not None
    }
    constants = {
        a.name for n, _ in plans.values() for a in n.args[1:] if isinstance(a, torch.fx.Node)
    }
    noisy = _values(quantized, feeds, set(plans) | {src.name for _, src in plans.values()})
    exact = _values(fp32, feeds, constants)
    scores: dict[str, float] = {}
    for name, (node, source) in plans.items():
        args = [noisy[source.name], *(exact[a.name] if isinstance(a, torch.fx.Node) else a
                                      for a in node.args[1:])]  # fmt: skip
        want = node.target(*args, **node.kwargs)
        score = _nsr(noisy[name], want)
        scores[owner(node)] = max(scores.get(owner(node), 0.0), score)
    return scores


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


def _values(graph: torch.fx.GraphModule, feeds, names: set[str]) -> dict[str, torch.Tensor]:
    """The named nodes' outputs on `feeds`, float64."""
    seen: dict[str, torch.Tensor] = {}

    class Recorder(torch.fx.Interpreter):
        def run_node(self, n):
            result = super().run_node(n)
            if n.name in names and isinstance(result, torch.Tensor):
                seen[n.name] = result.detach().double()
            return result

    with torch.no_grad():
        Recorder(graph).run(*feeds)
    return seen


def _nsr(got: torch.Tensor, want: torch.Tensor) -> float:
    signal = float(want.pow(2).sum())
    noise = float((got - want).pow(2).sum())
    return noise / signal if signal > 0 else 0.0


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
) -> tuple[torch.fx.GraphModule, FallbackResult]:
    """PT2E INT8 of `graph` whose top-1 drop on the labelled `eval_data` holds `max_drop`,
    keeping the fewest most sensitive modules in FP32 (the smallest passing configuration
    found in `max_time_s`, else the one that lost least)."""
    check = eager_check(model, eval_data, asked=BudgetOptions(metric="top1", max_drop=max_drop))
    names = quantizable_modules(graph)
    built: dict[tuple[str, ...], torch.fx.GraphModule] = {}

    def build(excluded: tuple[str, ...]) -> torch.fx.GraphModule:
        if excluded not in built:
            built[excluded] = quantize_graph(
                copy.deepcopy(graph), inputs=model.inputs, target=target, calib=calib,
                keep_fp32=excluded,
            )  # fmt: skip
        return built[excluded]

    def evaluate(excluded: tuple[str, ...]) -> Accuracy:
        return _accuracy(model, build(excluded), eval_data, check)

    def rank() -> dict[str, float]:
        feeds = to_torch_inputs(
            model.inputs, {s.name: eval_data[s.name][:_RANKING_SAMPLES] for s in model.inputs}
        )
        return module_sensitivity(graph, build(()), names, feeds)

    result = fallback_loop(
        [(name, "module") for name in names], evaluate, budget=check.budget, rank=rank,
        max_excluded=max_excluded, max_time_s=max_time_s,
    )  # fmt: skip
    if result.excluded:
        log.info("pt2e %s: %d modules kept in FP32: %s", target, len(result.excluded),
                 ", ".join(result.excluded))  # fmt: skip
    return build(result.excluded), result


def _accuracy(
    model: LoadedModel, quantized: torch.fx.GraphModule, data: Mapping, check: EagerCheck
) -> Accuracy:
    rows = eager_output(replace(model, module=quantized), data)
    outputs = EvalOutputs(
        rows.reshape(len(rows), -1).astype(np.float32, copy=False),
        check.reference.labels,
        sample_shape=check.reference.sample_shape,
    )
    return check.accuracy(outputs)
