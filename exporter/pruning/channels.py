"""Structured channel pruning with torch-pruning's dependency graph (DepGraph).

Coupled layers (residual adds, concatenations, depthwise/grouped convs, BatchNorm, Linear heads)
lose the same channels together, and the channels are physically removed: the pruned module is
smaller, so every exported artifact is too. Channels that reach a model output or meet a model
input (a residual add with the raw input) are never removed, nor are layers the user protects.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace

import numpy as np
import torch
import torch_pruning as tp
from torch import nn

from torchship.errors import ConfigError, ExportError, ToolchainError, first_line
from torchship.exporter.pruning.blame import run_blaming
from torchship.exporter.pruning.importance import IMPORTANCES, accumulate_taylor_gradients
from torchship.interrupts import reraise_interrupt
from torchship.loaded import LoadedModel, eval_mode, flatten_outputs, to_torch_inputs

__all__ = [
    "PruneConfig",
    "PruneResult",
    "prune_channels",
    "prunable_layers",
    "count_cost",
    "require_prunable_module",
]

log = logging.getLogger(__name__)

_ROOT_TYPES = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)


@dataclass(frozen=True)
class PruneConfig:
    """What to prune. `None` means the default (ratio 0.5, L2 magnitude, round to 8)."""

    ratio: float | None = None
    importance: str | None = None
    global_pruning: bool = False
    round_to: int | None = None
    ignore: tuple[str, ...] = ()
    #: per-layer ratios (layer name -> ratio) overriding `ratio` for those layers' groups
    layer_ratios: Mapping[str, float] | None = None
    #: the most any one layer loses in global mode, so no layer vanishes
    max_layer_ratio: float = 0.9

    def __post_init__(self) -> None:
        object.__setattr__(self, "ignore", tuple(self.ignore))
        check_ratio(self.ratio_value, what="pruning ratio")
        for name, value in (self.layer_ratios or {}).items():
            check_ratio(value, what=f"pruning ratio of layer {name!r}")
        if self.round_to is not None and self.round_to < 1:
            raise ConfigError(f"round_to must be >= 1, got {self.round_to}")
        IMPORTANCES.get(self.importance_name)

    @property
    def ratio_value(self) -> float:
        return 0.5 if self.ratio is None else float(self.ratio)

    @property
    def importance_name(self) -> str:
        return self.importance or "l2"

    @property
    def round_value(self) -> int:
        return 8 if self.round_to is None else self.round_to


def require_prunable_module(model: LoadedModel) -> None:
    """ConfigError when `model` is a compiled graph (a .pt2 program, TorchScript) with no layers.

    Pruning edits conv/linear modules; a loaded torch.export program or TorchScript archive holds
    only a graph over raw tensors, so there is nothing pruning could shrink.
    """
    module = model.module
    if isinstance(module, torch.jit.ScriptModule):
        kind = "a TorchScript archive"
    elif isinstance(module, torch.fx.GraphModule):
        if any(isinstance(m, _ROOT_TYPES) for m in module.modules()):
            return
        kind = "a torch.export program (.pt2)"
    else:
        return
    raise ConfigError(
        f"{model.source}: cannot prune {kind}: it holds a compiled graph, not conv/linear layers; "
        "prune the original model source (pkg.module:factory or file.py:factory, with --weights) "
        "and export the pruned result"
    )


def check_ratio(value: float, *, what: str) -> None:
    if not 0.0 < value < 1.0:
        raise ConfigError(
            f"{what} {value} is outside (0, 1): give the fraction to remove, e.g. 0.5"
        )


@dataclass(frozen=True)
class PruneResult:
    """The pruned model, the per-layer channel plan and the cost before/after."""

    model: LoadedModel
    #: layer name -> [out channels before, after] for every conv/linear layer
    plan: dict[str, list[int]]
    params: tuple[int, int]
    macs: tuple[int, int]
    config: PruneConfig
    protected: tuple[str, ...] = field(default=())

    @property
    def changed_layers(self) -> dict[str, list[int]]:
        return {name: pair for name, pair in self.plan.items() if pair[0] != pair[1]}

    def to_dict(self) -> dict:
        return {
            "ratio": self.config.ratio_value,
            "importance": self.config.importance_name,
            "global": self.config.global_pruning,
            "round_to": self.config.round_value,
            "ignore": list(self.config.ignore),
            "protected_layers": list(self.protected),
            "params": {"before": self.params[0], "after": self.params[1]},
            "macs": {"before": self.macs[0], "after": self.macs[1]},
            "channels": {name: {"before": b, "after": a} for name, (b, a) in self.plan.items()},
        }


def prune_channels(
    model: LoadedModel,
    *,
    config: PruneConfig | None = None,
    data: dict[str, np.ndarray] | None = None,
) -> PruneResult:
    """A pruned copy of `model` (the original is untouched); ConfigError for bad settings."""
    require_prunable_module(model)
    config = config or PruneConfig()
    spec = IMPORTANCES.get(config.importance_name)
    module = eval_mode(copy.deepcopy(model.module))
    args = to_torch_inputs(model.inputs, model.example)
    before_channels = _out_channels(module)
    before = count_cost(module, args)
    ignored, protected = _ignored_modules(module, args, config)
    ratios = _group_ratios(module, args, ignored, config)
    pruner = tp.pruner.BasePruner(
        module,
        args,
        importance=spec.build(),
        forward_fn=_forward,
        global_pruning=config.global_pruning,
        pruning_ratio=config.ratio_value,
        pruning_ratio_dict=None if config.global_pruning else ratios,
        max_pruning_ratio=config.max_layer_ratio if config.global_pruning else 1.0,
        ignored_layers=ignored,
        round_to=config.round_value if config.round_value > 1 else None,
        root_module_types=list(_ROOT_TYPES),
    )
    if spec.needs_data:
        accumulate_taylor_gradients(module, data, model.inputs)
    _step(pruner)
    module.zero_grad(set_to_none=True)
    eval_mode(module)
    pruned = replace(model, module=module)
    run_blaming(module, lambda: _check_outputs(model, pruned), what="pruning")
    after_channels = _out_channels(module)
    plan = {name: [c, after_channels[name]] for name, c in before_channels.items()}
    after = count_cost(module, args)
    result = PruneResult(
        pruned, plan, (before[1], after[1]), (before[0], after[0]), config, protected
    )
    log.info(
        "pruned %d layers: params %d -> %d, MACs %d -> %d",
        len(result.changed_layers), *result.params, *result.macs,
    )  # fmt: skip
    return result


def prunable_layers(model: LoadedModel, *, ignore: Sequence[str] = ()) -> list[str]:
    """Names of the conv/linear layers whose output channels pruning may remove."""
    require_prunable_module(model)
    module = model.module
    args = to_torch_inputs(model.inputs, model.example)
    config = PruneConfig(ignore=tuple(ignore))
    ignored, _ = _ignored_modules(module, args, config)
    graph = tp.DependencyGraph().build_dependency(module, args, forward_fn=_forward)
    names = {m: n for n, m in module.named_modules()}
    return [
        names[dep.target.module]
        for group in graph.get_all_groups(ignored_layers=ignored, root_module_types=_ROOT_TYPES)
        for dep, _ in group
        if graph.is_out_channel_pruning_fn(dep.handler)
        and isinstance(dep.target.module, _ROOT_TYPES)
    ]


def count_cost(module: nn.Module, args: tuple[torch.Tensor, ...]) -> tuple[int, int]:
    """(MACs, parameters) of one forward pass on `args` (torch-pruning's op counter)."""
    macs, params = tp.utils.count_ops_and_params(module, args)
    return int(macs), int(params)


def _forward(module: nn.Module, args: tuple[torch.Tensor, ...]):
    return module(*args)


def _out_channels(module: nn.Module) -> dict[str, int]:
    counts = {}
    for name, layer in module.named_modules():
        if isinstance(layer, nn.Linear):
            counts[name] = layer.out_features
        elif isinstance(layer, nn.modules.conv._ConvNd):
            counts[name] = layer.out_channels
    return counts


def _ignored_modules(
    module: nn.Module, args: tuple[torch.Tensor, ...], config: PruneConfig
) -> tuple[list[nn.Module], tuple[str, ...]]:
    """The user's protected layers plus every group coupled to a model output or input."""
    named = dict(module.named_modules())
    ignored: list[nn.Module] = []
    for name in config.ignore:
        if name not in named or name == "":
            valid = ", ".join(n for n, m in named.items() if isinstance(m, _ROOT_TYPES))
            raise ConfigError(f"--ignore {name!r}: no such layer; layers: {valid}")
        ignored.extend(named[name].modules())
    ignored.extend(_parametrized(module))
    outputs: list[torch.Tensor] = []

    def capture(out):
        outputs.extend(_flat_tensors(out))
        return out

    graph = tp.DependencyGraph().build_dependency(
        module, args, forward_fn=_forward, output_transform=capture
    )
    output_fns = {t.grad_fn for t in outputs if t.grad_fn is not None}
    names = {m: n for n, m in named.items()}
    protected = []
    for group in graph.get_all_groups(ignored_layers=ignored, root_module_types=_ROOT_TYPES):
        if any(_touches_io(graph, dep, output_fns) for dep, _ in group):
            root = group[0].dep.source.module
            ignored.append(root)
            protected.append(names.get(root, str(root)))
    if not _has_free_group(graph, ignored):
        raise ConfigError(
            "the model has no prunable layers: no conv/linear layer has output channels that "
            "are free to remove (each reaches a model output, meets a model input or is ignored)"
        )
    return ignored, tuple(protected)


def _step(pruner) -> None:
    """Remove the channels; a layer torch-pruning cannot rewrite is named, not a KeyError."""
    try:
        pruner.step()
    except ToolchainError:
        raise
    except Exception as exc:
        reraise_interrupt(exc)
        raise ExportError(
            f"pruning cannot rewrite this model: {first_line(exc, limit=200)}; keep the layer "
            "whole with --ignore NAME"
        ) from exc


def _parametrized(module: nn.Module) -> list[nn.Module]:
    """Layers with parametrized weights (weight_norm): torch-pruning cannot resize them."""
    return [m for m in module.modules() if nn.utils.parametrize.is_parametrized(m)]


def _touches_io(graph, dep, output_fns: set) -> bool:
    node = dep.target
    fn = node.grad_fn
    if fn is None or isinstance(node.module, nn.Parameter):
        return False
    if fn in output_fns and graph.is_out_channel_pruning_fn(dep.handler):
        return True
    # An element-wise op / concat fed by a tensor outside the graph (a model input, a constant
    # buffer) cannot lose channels: that tensor keeps its size.
    if isinstance(node.module, _ROOT_TYPES) or not hasattr(fn, "next_functions"):
        return False
    op_type = getattr(node, "type", None)
    if op_type not in (tp.ops.OPTYPE.ELEMENTWISE, tp.ops.OPTYPE.CONCAT):
        return False
    return len(fn.next_functions) > 1 and any(f is None for f, _ in fn.next_functions)


def _has_free_group(graph, ignored: list[nn.Module]) -> bool:
    return any(
        True for _ in graph.get_all_groups(ignored_layers=ignored, root_module_types=_ROOT_TYPES)
    )


def _group_ratios(module, args, ignored, config: PruneConfig) -> dict[nn.Module, float]:
    """Per-group ratio: the uniform (or per-layer) ratio, capped so `round_to` channels stay."""
    named = dict(module.named_modules())
    layer_ratios = dict(config.layer_ratios or {})
    unknown = [n for n in layer_ratios if n not in named]
    if unknown:
        raise ConfigError(f"layer ratio for {unknown[0]!r}: no such layer")
    graph = tp.DependencyGraph().build_dependency(module, args, forward_fn=_forward)
    ratios: dict[nn.Module, float] = {}
    for group in graph.get_all_groups(ignored_layers=ignored, root_module_types=_ROOT_TYPES):
        members = [
            dep.target.module for dep, _ in group if graph.is_out_channel_pruning_fn(dep.handler)
        ]
        root = group[0].dep.source.module
        wanted = [layer_ratios[n] for n, m in named.items() if m in members and n in layer_ratios]
        ratio = max(wanted) if wanted else config.ratio_value
        ratios[root] = _rounded_ratio(ratio, graph.get_out_channels(root) or 0, config.round_value)
    return ratios


def _rounded_ratio(ratio: float, channels: int, multiple: int) -> float:
    """The ratio that keeps the multiple of `multiple` channels nearest to the wanted count.

    torch-pruning floors the kept count to the multiple, which at 16 channels would turn any
    ratio into 0.5; keeping the nearest multiple (at least one) respects small ratios.
    """
    if channels <= multiple:
        return 0.0
    keep = max(multiple, round(channels * (1.0 - ratio) / multiple) * multiple)
    if keep >= channels:
        return 0.0
    return 1.0 - (keep + 0.5) / channels  # +0.5: torch-pruning truncates channels * (1 - r)


def _flat_tensors(out) -> list[torch.Tensor]:
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, dict):
        return [t for v in out.values() for t in _flat_tensors(v)]
    if isinstance(out, (tuple, list)):
        return [t for v in out for t in _flat_tensors(v)]
    return []


def _check_outputs(original: LoadedModel, pruned: LoadedModel) -> None:
    """The pruned model must give outputs of the same shapes (a guard against a bad plan)."""
    with torch.inference_mode():
        before = flatten_outputs(
            original.module(*to_torch_inputs(original.inputs, original.example))
        )
        after = flatten_outputs(pruned.module(*to_torch_inputs(pruned.inputs, pruned.example)))
    shapes = [(a.shape, b.shape) for a, b in zip(before, after, strict=True)]
    bad = [(name, s) for name, s in zip(original.outputs, shapes, strict=True) if s[0] != s[1]]
    if bad:
        name, (want, got) = bad[0]
        raise ExportError(
            f"pruning changed output {name!r} from {list(want)} to {list(got)}; protect the "
            "layer that produces it with --ignore"
        )
