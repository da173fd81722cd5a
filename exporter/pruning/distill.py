"""Recovery after pruning: knowledge distillation from the unpruned teacher, or plain fine-tuning.

Loss = kd_weight * T^2 * KL(softmax(teacher / T) || softmax(student / T))
     + ce_weight * cross-entropy(student, labels)          (only when labels exist)
Deterministic for a given seed on CPU (seeded init of the shuffling and of torch's RNG).
"""

from __future__ import annotations

import copy
import enum
import logging
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import numpy as np
import torch
from torch.nn import functional as F

from torchship.data import LABELS_KEY, check_labels
from torchship.errors import CalibrationError, ConfigError
from torchship.exporter.pruning.importance import check_training_data, iterate_batches
from torchship.loaded import LoadedModel, eval_mode
from torchship.runtimes.evaluate import evaluate

__all__ = ["RecoveryMode", "DistillConfig", "TrainReport", "recover", "evaluate_accuracy"]

log = logging.getLogger(__name__)


class RecoveryMode(enum.Enum):
    DISTILL = "distill"
    FINETUNE = "finetune"


@dataclass(frozen=True)
class DistillConfig:
    """Training settings; CPU-friendly defaults (a few epochs of Adam at batch 64)."""

    mode: RecoveryMode = RecoveryMode.DISTILL
    epochs: int = 3
    batch_size: int = 64
    lr: float = 2e-3
    weight_decay: float = 0.0
    temperature: float = 4.0
    kd_weight: float = 0.7
    ce_weight: float = 0.3
    seed: int = 0

    def __post_init__(self) -> None:
        if self.epochs < 0:
            raise ConfigError(f"epochs must be >= 0, got {self.epochs}")
        if self.batch_size < 1:
            raise ConfigError(f"batch size must be >= 1, got {self.batch_size}")
        if not self.lr > 0:
            raise ConfigError(f"learning rate must be > 0, got {self.lr}")
        if not self.temperature > 0:
            raise ConfigError(f"temperature must be > 0, got {self.temperature}")
        if self.kd_weight < 0 or self.ce_weight < 0 or self.kd_weight + self.ce_weight == 0:
            raise ConfigError(
                f"loss weights must be >= 0 and not both 0, got kd {self.kd_weight} "
                f"ce {self.ce_weight}"
            )


@dataclass(frozen=True)
class TrainReport:
    mode: str
    epochs: int
    samples: int
    losses: tuple[float, ...] = field(default=())
    train_accuracy: tuple[float, ...] = field(default=())

    def to_dict(self) -> dict:
        return {
            "mode": self.mode,
            "epochs": self.epochs,
            "samples": self.samples,
            "loss_per_epoch": [round(v, 6) for v in self.losses],
            "train_accuracy_per_epoch": [round(v, 6) for v in self.train_accuracy],
        }


Progress = Callable[[str], None]


def recover(
    student: LoadedModel,
    data: dict[str, np.ndarray],
    *,
    teacher: LoadedModel | None = None,
    config: DistillConfig | None = None,
    progress: Progress | None = None,
) -> tuple[LoadedModel, TrainReport]:
    """Fine-tune a copy of `student` on `data`; distill from `teacher` in DISTILL mode."""
    config = config or DistillConfig()
    count = check_training_data(data, student.inputs)
    has_labels = LABELS_KEY in data
    if config.mode is RecoveryMode.DISTILL and teacher is None:
        raise ConfigError("distillation needs the unpruned teacher model")
    if config.mode is RecoveryMode.FINETUNE and not has_labels:
        raise CalibrationError(f"plain fine-tuning needs '{LABELS_KEY}' in the training data")
    module = copy.deepcopy(student.module)
    step = progress or (lambda message: None)
    losses, accuracies = [], []
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        rng = np.random.default_rng(config.seed)
        optimizer = torch.optim.Adam(
            module.parameters(), lr=config.lr, weight_decay=config.weight_decay
        )
        total = max(1, config.epochs * -(-count // config.batch_size))
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total)
        for epoch in range(config.epochs):
            loss, acc = _epoch(module, teacher, data, student, config, optimizer, scheduler, rng)
            losses.append(loss)
            accuracies.append(acc)
            step(f"{config.mode.value} epoch {epoch + 1}/{config.epochs}: loss {loss:.4f}, "
                 f"train acc {acc:.2%}")  # fmt: skip
            log.info("epoch %d: loss %.4f, train accuracy %.4f", epoch + 1, loss, acc)
    eval_mode(module)
    report = TrainReport(config.mode.value, config.epochs, count, tuple(losses), tuple(accuracies))
    return replace(student, module=module), report


def _epoch(
    module, teacher, data, student, config, optimizer, scheduler, rng
) -> tuple[float, float]:
    module.train()
    count = len(np.asarray(data[student.inputs[0].name]))
    order = rng.permutation(count)
    total_loss, correct, seen = 0.0, 0, 0
    for inputs, labels in iterate_batches(
        data, student.inputs, batch_size=config.batch_size, order=order
    ):
        if len(inputs[0]) < 2:
            continue  # BatchNorm cannot train on a batch of one
        logits = module(*inputs)
        loss = _loss(logits, inputs, labels, teacher, config)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        total_loss += loss.item() * len(inputs[0])
        seen += len(inputs[0])
        if labels is not None:
            correct += int((logits.argmax(dim=1) == labels).sum())
    return total_loss / max(seen, 1), correct / max(seen, 1)


def _loss(logits, inputs, labels, teacher, config: DistillConfig) -> torch.Tensor:
    if logits.ndim != 2:
        raise ConfigError(
            f"recovery needs a classifier returning [batch, classes], got {list(logits.shape)}"
        )
    ce = None
    if labels is not None:
        check_labels(labels, what="training data", classes=logits.shape[1])
        ce = F.cross_entropy(logits, labels)
    if config.mode is RecoveryMode.FINETUNE:
        return ce
    with torch.no_grad():
        eval_mode(teacher.module)
        target = teacher.module(*inputs)
    t = config.temperature
    kd = F.kl_div(
        F.log_softmax(logits / t, dim=1), F.log_softmax(target / t, dim=1),
        reduction="batchmean", log_target=True,
    ) * (t * t)  # fmt: skip
    if ce is None:
        return kd
    return config.kd_weight * kd + config.ce_weight * ce


def evaluate_accuracy(
    model: LoadedModel, data: dict[str, np.ndarray], *, batch_size: int = 256
) -> float | None:
    """Top-1 accuracy of the eager model on `data` (None when it has no labels).

    Runs the model as an eager artifact on the `torch` runtime through the evaluator, so the
    readers' checks and the label rule are those of every other accuracy torchship reports.
    """
    if LABELS_KEY not in data:
        return None
    check_training_data(data, model.inputs, what="eval data")
    # As the training batches do: inputs take the model's dtypes, extra arrays are not inputs.
    arrays = {s.name: np.asarray(data[s.name]).astype(s.np_dtype, copy=False) for s in model.inputs}
    arrays[LABELS_KEY] = np.asarray(data[LABELS_KEY])
    try:
        outputs = evaluate(model.eager(), arrays, runtime="torch", batch_size=batch_size)
    except CalibrationError as exc:
        raise CalibrationError(f"eval data: {exc}") from None
    return outputs.top1()
