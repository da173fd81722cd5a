"""Structured pruning folded into the model before export: channel removal on Torch-Pruning's
dependency graph, importance criteria, distillation recovery, the latency-aware ratio search,
unstructured (sparsity) pruning and pickle-free saving."""

from torchship.exporter.pruning.channels import PruneConfig, PruneResult, prune_channels
from torchship.exporter.pruning.run import PruneOutcome, prune

__all__ = ["PruneConfig", "PruneOutcome", "PruneResult", "prune", "prune_channels"]
