"""Channel importance criteria for structured pruning, looked up by name.

`l1`/`l2` rank channels by weight magnitude (no data needed); `taylor` ranks them by
|weight x gradient| accumulated over a few batches of data (labels when given, else the
unpruned model's own predictions as targets).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch_pruning as tp

from torchship.data import LABELS_KEY, check_labels
from torchship.errors import CalibrationError, ConfigError
from torchship.loaded import eval_mode
from torchship.registry import Registry
from torchship.specs import InputSpec

__all__ = [
    "IMPORTANCES",
    "ImportanceSpec",
    "accumulate_taylor_gradients",
    "check_training_data",
    "iterate_batches",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ImportanceSpec:
    """How to build a torch-pruning importance, and whether it needs data (gradients)."""

    build: Callable[[], tp.importance.Importance]
    needs_data: bool
    description: str


IMPORTANCES: Registry[ImportanceSpec] = Registry("importance")
IMPORTANCES.register("l1")(
    ImportanceSpec(lambda: tp.importance.GroupMagnitudeImportance(p=1), False, "L1 magnitude")
)
IMPORTANCES.register("l2")(
    ImportanceSpec(lambda: tp.importance.GroupMagnitudeImportance(p=2), False, "L2 magnitude")
)
IMPORTANCES.register("taylor")(
    ImportanceSpec(tp.importance.GroupTaylorImportance, True, "first-order Taylor (data)")
)


def check_training_data(
    data: dict[str, np.ndarray], specs: tuple[InputSpec, ...], *, what: str = "training data"
) -> int:
    """Check a dict of arrays (one per input, optional `labels`); returns the sample count."""
    missing = [s.name for s in specs if s.name not in data]
    if missing:
        raise CalibrationError(
            f"{what}: no array for input {missing[0]!r}; arrays given: {sorted(data)}"
        )
    counts = {name: len(np.asarray(data[name])) for name in [s.name for s in specs]}
    if len(set(counts.values())) != 1:
        raise CalibrationError(f"{what}: arrays disagree on the number of samples: {counts}")
    count = next(iter(counts.values()))
    if LABELS_KEY in data:
        check_labels(data[LABELS_KEY], what=what, samples=count)
    if count == 0:
        raise CalibrationError(f"{what}: holds no samples")
    for spec in specs:
        shape = np.shape(data[spec.name])[1:]
        if len(shape) != len(spec.shape) - 1:
            raise CalibrationError(
                f"{what}: input {spec.name!r} has sample shape {list(shape)}, "
                f"expected rank {len(spec.shape) - 1} like {list(spec.shape[1:])}"
            )
    return count


def iterate_batches(
    data: dict[str, np.ndarray],
    specs: tuple[InputSpec, ...],
    *,
    batch_size: int,
    order: np.ndarray | None = None,
):
    """Yield (inputs tuple of tensors, labels tensor or None) in `order` (default: as stored)."""
    count = len(np.asarray(data[specs[0].name]))
    order = np.arange(count) if order is None else order
    for start in range(0, count, batch_size):
        idx = order[start : start + batch_size]
        inputs = tuple(
            torch.from_numpy(np.ascontiguousarray(np.asarray(data[s.name])[idx]).astype(s.dtype))
            for s in specs
        )
        labels = data.get(LABELS_KEY)
        yield (
            inputs,
            (
                torch.from_numpy(np.asarray(labels)[idx].astype(np.int64))
                if labels is not None
                else None
            ),
        )


def accumulate_taylor_gradients(
    module: torch.nn.Module,
    data: dict[str, np.ndarray] | None,
    specs: tuple[InputSpec, ...],
    *,
    max_batches: int = 4,
    batch_size: int = 32,
) -> None:
    """Fill `.grad` of every parameter with the loss gradient over up to `max_batches` batches."""
    if data is None:
        raise ConfigError("importance 'taylor' needs data; pass --train DATA or use l1/l2")
    check_training_data(data, specs)
    module.zero_grad(set_to_none=True)
    eval_mode(module)  # BN statistics stay as trained: importance of the deployed network
    for index, (inputs, labels) in enumerate(iterate_batches(data, specs, batch_size=batch_size)):
        if index >= max_batches:
            break
        logits = module(*inputs)
        if not isinstance(logits, torch.Tensor) or logits.ndim != 2:
            raise ConfigError(
                "importance 'taylor' needs a classifier returning one [batch, classes] tensor"
            )
        if labels is not None:
            check_labels(labels, what="training data", classes=logits.shape[1])
        targets = labels if labels is not None else logits.detach().argmax(dim=1)
        torch.nn.functional.cross_entropy(logits, targets).backward()
