"""Graph passes on eager modules: each takes a module and returns a PassResult (+ what changed).

`fold-batchnorm` folds every BatchNorm that directly follows a conv/linear into that layer's
weights and bias (eval-mode statistics), so exported graphs carry no BatchNorm. It works on a
copy, keeps the module's own classes (no GraphModule), and only folds pairs where the layer's
output feeds nothing but the BatchNorm and each module is called once.
"""

from __future__ import annotations

import copy
import logging
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import torch
from torch import fx, nn
from torch.nn.utils.fusion import fuse_conv_bn_eval, fuse_linear_bn_eval

from torchship.interrupts import reraise_interrupt
from torchship.loaded import LoadedModel, eval_mode
from torchship.registry import Registry

__all__ = ["PASSES", "PassResult", "fold_batchnorm", "run_passes"]

log = logging.getLogger(__name__)

_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_BNS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


@dataclass(frozen=True)
class PassResult:
    """The transformed module (a copy), the changes made, and why a pass did nothing if so."""

    name: str
    module: nn.Module
    changes: tuple[str, ...]
    skipped: str = ""

    @property
    def changed(self) -> bool:
        return bool(self.changes)


GraphPass = Callable[[nn.Module], PassResult]
#: pass name -> fn(module) -> PassResult
PASSES: Registry[GraphPass] = Registry("graph pass")


@PASSES.register("fold-batchnorm")
def fold_batchnorm(module: nn.Module) -> PassResult:
    """Fold conv/linear -> BatchNorm pairs into the conv/linear; the BatchNorm becomes Identity."""
    module = eval_mode(copy.deepcopy(module))
    try:
        traced = fx.symbolic_trace(module)
    except Exception as exc:  # data-dependent control flow: leave the model as it is
        reraise_interrupt(exc)
        reason = f"fx tracing failed ({type(exc).__name__}); BatchNorm left unfolded"
        log.warning("fold-batchnorm: %s", reason)
        return PassResult("fold-batchnorm", module, (), reason)
    pairs = _foldable_pairs(traced)
    changes = []
    for layer_name, bn_name in pairs:
        layer, bn = module.get_submodule(layer_name), module.get_submodule(bn_name)
        fused = (
            fuse_conv_bn_eval(layer, bn) if isinstance(layer, _CONVS) else _fuse_linear(layer, bn)
        )
        _set_submodule(module, layer_name, fused)
        _set_submodule(module, bn_name, nn.Identity())
        changes.append(f"folded {bn_name} into {layer_name}")
    log.info("fold-batchnorm: %d BatchNorm layers folded", len(changes))
    return PassResult("fold-batchnorm", module, tuple(changes))


def _foldable_pairs(traced: fx.GraphModule) -> list[tuple[str, str]]:
    modules = dict(traced.named_modules())
    calls = Counter(n.target for n in traced.graph.nodes if n.op == "call_module")
    pairs = []
    for node in traced.graph.nodes:
        if node.op != "call_module" or not isinstance(modules[node.target], _BNS):
            continue
        prev = node.args[0] if node.args else None
        if not isinstance(prev, fx.Node) or prev.op != "call_module":
            continue
        layer, bn = modules[prev.target], modules[node.target]
        fits = (isinstance(layer, _CONVS) and not layer.transposed) or (
            isinstance(layer, nn.Linear) and isinstance(bn, nn.BatchNorm1d)
        )
        if not fits or not bn.track_running_stats or bn.running_mean is None:
            continue
        if len(prev.users) == 1 and calls[prev.target] == 1 and calls[node.target] == 1:
            pairs.append((str(prev.target), str(node.target)))
    return pairs


def _fuse_linear(layer: nn.Linear, bn: nn.BatchNorm1d) -> nn.Linear:
    # BatchNorm1d after a Linear normalizes its features only for [N, C] inputs; a [N, C, L]
    # input would normalize another axis, which fx cannot tell apart here, so check the sizes.
    if layer.out_features != bn.num_features:
        return layer
    return fuse_linear_bn_eval(layer, bn)


def _set_submodule(root: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, child, new)


def run_passes(
    model: LoadedModel, names: Sequence[str] | None = None
) -> tuple[LoadedModel, list[PassResult]]:
    """Apply the named passes in order (default: fold-batchnorm) to a copy of `model`."""
    results = []
    module = model.module
    for name in names or ["fold-batchnorm"]:
        result = PASSES.get(name)(module)
        results.append(result)
        module = result.module
    with torch.inference_mode():
        eval_mode(module)
    return replace(model, module=module), results
