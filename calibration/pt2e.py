"""PT2E INT8: quantize a captured torch.export graph for XNNPACK or the X86 Inductor backend.

The other quantization world beside ONNX Runtime's QDQ (docs/design.md, "Quantizers"): a
target's quantizer annotates the graph (`prepare_pt2e`), the calibration batches from the data
readers stream through it once to collect ranges, and `convert_pt2e` inserts the quantize /
dequantize ops. The result is an nn.Module that the exporter lowers like any other model:
`xnnpack` to an ExecuTorch `.pte`, `x86-inductor` to an AOTInductor package.
"""

from __future__ import annotations

import collections
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from torchship.artifact import Format
from torchship.data import DataSet, ShortBatch
from torchship.errors import BackendUnavailableError, CalibrationError, first_line
from torchship.loaded import to_torch_inputs
from torchship.registry import Registry
from torchship.specs import InputSpec

__all__ = ["PT2E_TARGETS", "Pt2eTarget", "module_path", "quantize_graph", "split_repeated_calls"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Pt2eTarget:
    """A PT2E quantization target: its quantizer, the format it lowers to, the runtime."""

    name: str
    format: Format
    runtime: str
    make_quantizer: Callable[[], Any]
    extra: str
    about: str
    #: The accuracy fallback scores each trial as the lowered file: lowering takes seconds (an
    #: ExecuTorch program), not a C++ compile (an AOTInductor package: eager is scored instead).
    trials_lowered: bool = False

    def quantizer(self) -> Any:
        """A configured quantizer; BackendUnavailableError naming the extra when missing."""
        try:
            return self.make_quantizer()
        except ImportError as exc:
            raise BackendUnavailableError(
                f"--target {self.name}: its quantizer is not installed ({first_line(exc)}); "
                f"pip install torchship[{self.extra}]"
            ) from None


def _xnnpack_quantizer() -> Any:
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
        XNNPACKQuantizer,
        get_symmetric_quantization_config,
    )

    # Symmetric INT8, per-channel weights: what XNNPACK's integer kernels take.
    config = get_symmetric_quantization_config(is_per_channel=True)
    return XNNPACKQuantizer().set_global(config)


def _x86_inductor_quantizer() -> Any:
    from torchao.quantization.pt2e.quantizer.x86_inductor_quantizer import (
        X86InductorQuantizer,
        get_default_x86_inductor_quantization_config,
    )

    return X86InductorQuantizer().set_global(get_default_x86_inductor_quantization_config())


#: target name -> Pt2eTarget
PT2E_TARGETS: Registry[Pt2eTarget] = Registry("PT2E target")
PT2E_TARGETS.register("xnnpack")(
    Pt2eTarget(
        "xnnpack",
        Format.EXECUTORCH,
        "executorch",
        _xnnpack_quantizer,
        extra="executorch",
        about="XNNPACKQuantizer (symmetric, per-channel) -> ExecuTorch .pte",
        trials_lowered=True,
    )
)
PT2E_TARGETS.register("x86-inductor")(
    Pt2eTarget(
        "x86-inductor",
        Format.AOTI,
        "aoti",
        _x86_inductor_quantizer,
        extra="executorch",  # torchao comes with it
        about="torchao X86InductorQuantizer -> AOTInductor package",
    )
)


def module_path(path: str) -> str:
    """A module's qualified name from an `nn_module_stack` path, without the `@<node>` mark
    `split_repeated_calls` gives each call of a reused module."""
    return path.split("@", 1)[0]


def _leave_out(quantizer: Any, graph: torch.fx.GraphModule, names: Sequence[str]) -> None:
    """Tell `quantizer` not to annotate the nodes of the modules `names` (and their children)."""
    kept = tuple(names)

    def inside(path: str) -> bool:
        path = module_path(path)
        return any(path == k or path.startswith(k + ".") for k in kept)

    if hasattr(quantizer, "set_module_name_qconfig"):  # X86InductorQuantizer: None = float
        # it matches names exactly, so each marked call of a reused module is named too
        paths = {
            path
            for node in graph.graph.nodes
            for path, _ in (node.meta.get("nn_module_stack") or {}).values()
            if inside(path)
        }
        for path in sorted(paths | set(kept)):
            quantizer.set_module_name_qconfig(path, None)
        return

    def annotate(node: torch.fx.Node) -> bool:  # XNNPACKQuantizer refuses None; takes a filter
        stack = node.meta.get("nn_module_stack") or {}
        return not any(inside(path) for path, _ in stack.values())

    quantizer.set_filter_function(annotate)


def split_repeated_calls(graph: torch.fx.GraphModule) -> int:
    """Give each call of a module that is called several times its own source partition.

    Quantizers match patterns on source partitions (the nodes one module call made, found by
    the innermost `nn_module_stack` entry). A model that reuses one `nn.ReLU` for two
    activations (as ResNet blocks do) yields one partition with two outputs, which the X86
    Inductor quantizer refuses. Returns how many nodes got their own partition.
    """
    groups: dict[tuple[str, Any], list[torch.fx.Node]] = collections.defaultdict(list)
    for node in graph.graph.nodes:
        stack = node.meta.get("nn_module_stack")
        if node.op == "call_function" and stack:
            groups[stack[next(reversed(stack))]].append(node)  # (fqn, module class)
    moved = 0
    for (fqn, kind), nodes in groups.items():
        if len(nodes) < 2 or len({n.target for n in nodes}) != 1:
            continue  # one call, or a module whose call makes several nodes: left as it is
        for node in nodes:
            stack = dict(node.meta["nn_module_stack"])
            stack[next(reversed(stack))] = (f"{fqn}@{node.name}", kind)
            node.meta["nn_module_stack"] = stack
            moved += 1
    return moved


def quantize_graph(
    graph: torch.fx.GraphModule,
    *,
    inputs: Sequence[InputSpec],
    target: str,
    calib: DataSet,
    keep_fp32: Sequence[str] = (),
) -> torch.fx.GraphModule:
    """INT8 `graph` (a `torch.export(...).module()`) for `target`, calibrated on `calib`; the
    modules named in `keep_fp32` (qualified names, with their submodules) stay FP32."""
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    spec = PT2E_TARGETS.get(target)
    quantizer = spec.quantizer()
    split_repeated_calls(graph)
    if keep_fp32:
        _leave_out(quantizer, graph, keep_fp32)
    try:
        prepared = prepare_pt2e(graph, quantizer)
    except Exception as exc:  # the quantizer's pattern matching raises ValueError/AssertionError
        raise CalibrationError(
            f"--target {target}: the quantizer cannot annotate this model ({first_line(exc)})"
        ) from exc
    with torch.no_grad():
        for batch in calib.batches(short=ShortBatch.DROP):
            try:
                prepared(*to_torch_inputs(inputs, batch.feeds))
            except Exception as exc:  # the observed graph broke what eager runs (aten.index
                # got a float index on BERT with xnnpack): the candidate is refused, not a crash
                raise CalibrationError(
                    f"--target {target}: the model prepared for calibration failed on "
                    f"{batch.origin}: {type(exc).__name__}: {first_line(exc)}"
                ) from exc
    log.info("pt2e %s: calibrated on %d samples", target, calib.count)
    return convert_pt2e(prepared)
