"""Unstructured (weight-level) pruning with `torch.nn.utils.prune`, for completeness.

Masks are made permanent (plain zeros in dense weights). Dense runtimes (ONNX Runtime CPU,
eager PyTorch, TensorRT without sparse kernels) run such a model no faster: only the zero count
changes. Structured channel pruning (`prune_channels`) is what makes a model faster.
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass, replace

import torch
from torch import nn
from torch.nn.utils import prune as torch_prune

from torchship.errors import ConfigError
from torchship.exporter.pruning.channels import check_ratio, require_prunable_module
from torchship.loaded import LoadedModel, eval_mode

__all__ = ["UnstructuredReport", "prune_unstructured", "DENSE_RUNTIME_NOTE"]

log = logging.getLogger(__name__)

DENSE_RUNTIME_NOTE = (
    "unstructured sparsity leaves tensor shapes unchanged: dense runtimes (ort-cpu, torch, "
    "tensorrt) gain no speed from it; use channel pruning for latency"
)


@dataclass(frozen=True)
class UnstructuredReport:
    sparsity: float
    global_sparsity: float
    layers: dict[str, float]
    note: str = DENSE_RUNTIME_NOTE

    def to_dict(self) -> dict:
        return {
            "kind": "unstructured",
            "requested_sparsity": self.sparsity,
            "global_sparsity": self.global_sparsity,
            "layer_sparsity": self.layers,
            "note": self.note,
        }


def prune_unstructured(
    model: LoadedModel, *, sparsity: float, ignore: tuple[str, ...] = ()
) -> tuple[LoadedModel, UnstructuredReport]:
    """Zero the `sparsity` fraction of smallest-magnitude conv/linear weights (global L1)."""
    check_ratio(sparsity, what="sparsity")
    require_prunable_module(model)
    module = eval_mode(copy.deepcopy(model.module))
    named = dict(module.named_modules())
    for name in ignore:
        if name not in named or not name:
            raise ConfigError(f"--ignore {name!r}: no such layer")
    skip = {id(m) for name in ignore for m in named[name].modules()}
    targets = [
        (name, layer)
        for name, layer in named.items()
        if isinstance(layer, (nn.Linear, nn.modules.conv._ConvNd)) and id(layer) not in skip
    ]
    if not targets:
        raise ConfigError("the model has no prunable layers: no conv/linear weights to sparsify")
    torch_prune.global_unstructured(
        [(layer, "weight") for _, layer in targets],
        pruning_method=torch_prune.L1Unstructured,
        amount=sparsity,
    )
    for _, layer in targets:
        torch_prune.remove(layer, "weight")  # makes the mask permanent
    layers = {name: _zero_fraction(layer.weight) for name, layer in targets}
    zeros = sum(int((layer.weight == 0).sum()) for _, layer in targets)
    total = sum(layer.weight.numel() for _, layer in targets)
    report = UnstructuredReport(sparsity, zeros / total, layers)
    log.info("unstructured pruning: global sparsity %.3f; %s", report.global_sparsity, report.note)
    return replace(model, module=module), report


def _zero_fraction(weight: torch.Tensor) -> float:
    return round(float((weight == 0).float().mean()), 6)
