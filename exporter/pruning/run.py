"""The pruning pipeline: prune (fixed or latency-searched ratio), recover, report.

`prune` is the Python API behind `torchship prune` and the `ship` pipeline's prune step.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import numpy as np

from torchship.errors import ConfigError
from torchship.exporter.pruning.channels import PruneConfig, PruneResult, prune_channels
from torchship.exporter.pruning.distill import (
    DistillConfig,
    RecoveryMode,
    TrainReport,
    evaluate_accuracy,
    recover,
)
from torchship.exporter.pruning.search import SearchResult, search_ratio
from torchship.loaded import LoadedModel

__all__ = ["PruneOutcome", "prune"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PruneOutcome:
    """The final model plus everything that was measured on the way."""

    model: LoadedModel
    pruning: PruneResult
    search: SearchResult | None = None
    training: TrainReport | None = None
    accuracy: dict[str, float | None] = field(default_factory=dict)
    seconds: float = 0.0

    def to_dict(self) -> dict:
        return {
            "pruning": self.pruning.to_dict(),
            "search": self.search.to_dict() if self.search else None,
            "training": self.training.to_dict() if self.training else None,
            "accuracy": dict(self.accuracy),
            "seconds": round(self.seconds, 3),
        }


def prune(
    model: LoadedModel,
    *,
    config: PruneConfig | None = None,
    train: dict[str, np.ndarray] | None = None,
    eval: dict[str, np.ndarray] | None = None,  # noqa: A002 - mirrors --eval
    recovery: DistillConfig | None = None,
    target_speedup: float | None = None,
    target_latency_ms: float | None = None,
    runtime: str | None = None,
    batch: int | None = None,
    progress: Callable[[str], None] | None = None,
) -> PruneOutcome:
    """Prune `model` (ratio from `config`, or searched for a latency target), then recover.

    Recovery runs when `recovery` is given and its epochs > 0; it needs `train`.
    """
    start = time.perf_counter()
    config = config or PruneConfig()
    step = progress or (lambda message: None)
    search = None
    if target_speedup is not None or target_latency_ms is not None:
        search = search_ratio(
            model,
            target_speedup=target_speedup,
            target_latency_ms=target_latency_ms,
            runtime=runtime or "ort-cpu",
            batch=8 if batch is None else batch,
            config=config,
            eval_data=eval,
            data=train,
            progress=step,
        )
        pruned = search.chosen
    else:
        step(f"pruning {config.ratio_value:.0%} of the channels ({config.importance_name})")
        pruned = prune_channels(model, config=config, data=train)
    accuracy = {"unpruned": _accuracy(model, eval), "pruned": _accuracy(pruned.model, eval)}
    final, training = pruned.model, None
    if recovery is not None and recovery.epochs > 0:
        if train is None:
            raise ConfigError(f"{recovery.mode.value} needs training data; pass --train DATA")
        teacher = model if recovery.mode is RecoveryMode.DISTILL else None
        final, training = recover(
            pruned.model, train, teacher=teacher, config=recovery, progress=step
        )
        accuracy["recovered"] = _accuracy(final, eval)
    pruned = replace(pruned, model=final)
    return PruneOutcome(final, pruned, search, training, accuracy, time.perf_counter() - start)


def _accuracy(model: LoadedModel, data) -> float | None:
    return evaluate_accuracy(model, data) if data is not None else None
