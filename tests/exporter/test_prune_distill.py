"""Recovery after pruning: distillation beats no fine-tuning on the demo; determinism; errors."""

from __future__ import annotations

import numpy as np
import pytest

from torchship.errors import CalibrationError, ConfigError
from torchship.exporter.pruning.channels import PruneConfig, prune_channels
from torchship.exporter.pruning.distill import (
    DistillConfig,
    RecoveryMode,
    evaluate_accuracy,
    recover,
)
from torchship.exporter.pruning.run import prune
from torchship.models import demo_dataset, load_demo


def _split(name: str, count: int | None = None) -> dict[str, np.ndarray]:
    images, labels = demo_dataset(name)
    return {"image": images[:count], "labels": labels[:count]}


@pytest.mark.slow
def test_distillation_improves_accuracy_over_no_fine_tuning_on_the_demo():
    teacher, test = load_demo(), _split("test")
    # A subset keeps the test bounded on a busy 2-core machine; the full set recovers more.
    outcome = prune(
        teacher, config=PruneConfig(ratio=0.5), train=_split("train", 640), eval=test,
        recovery=DistillConfig(epochs=2, seed=0),
    )  # fmt: skip
    pruned, report = outcome.model, outcome.to_dict()
    accuracy = report["accuracy"]
    assert accuracy["pruned"] < 0.5  # 50% of the channels without recovery: near chance
    assert accuracy["recovered"] == pytest.approx(evaluate_accuracy(pruned, test))
    assert accuracy["recovered"] > accuracy["pruned"] + 0.3
    assert report["pruning"]["params"]["after"] < report["pruning"]["params"]["before"] / 3


def test_training_is_deterministic_for_a_seed():
    teacher = load_demo()
    student = prune_channels(teacher, config=PruneConfig(ratio=0.5)).model
    data = _split("train", 96)
    config = DistillConfig(epochs=1, batch_size=32, seed=3)
    _, first = recover(student, data, teacher=teacher, config=config)
    _, second = recover(student, data, teacher=teacher, config=config)
    assert first.losses == second.losses and first.losses[0] > 0


def test_plain_fine_tuning_and_unlabelled_distillation_run():
    teacher = load_demo()
    student = prune_channels(teacher, config=PruneConfig(ratio=0.5)).model
    data = _split("train", 64)
    config = DistillConfig(mode=RecoveryMode.FINETUNE, epochs=1, batch_size=32)
    _, report = recover(student, data, config=config)
    assert report.mode == "finetune" and len(report.losses) == 1
    unlabelled = {"image": data["image"]}
    _, report = recover(student, unlabelled, teacher=teacher, config=DistillConfig(epochs=1))
    assert report.train_accuracy == (0.0,)
    assert evaluate_accuracy(student, unlabelled) is None


def test_bad_training_data_and_settings_are_rejected():
    teacher = load_demo()
    with pytest.raises(CalibrationError, match="no array for input 'image'; arrays given"):
        recover(teacher, {"pixels": np.zeros((4, 1, 32, 32), np.float32)}, teacher=teacher)
    bad = {"image": np.zeros((4, 1, 32, 32), np.float32), "labels": np.zeros(3, np.int64)}
    with pytest.raises(CalibrationError, match="disagree on the number of samples"):
        recover(teacher, bad, teacher=teacher)
    with pytest.raises(CalibrationError, match="plain fine-tuning needs 'labels'"):
        recover(teacher, {"image": bad["image"]}, config=DistillConfig(mode=RecoveryMode.FINETUNE))
    with pytest.raises(ConfigError, match="distillation needs the unpruned teacher"):
        recover(teacher, {"image": bad["image"]})
    with pytest.raises(ConfigError, match="temperature must be > 0"):
        DistillConfig(temperature=0)


@pytest.mark.parametrize(
    ("labels", "match"),
    [
        (np.arange(1, 17) % 11, "label 10 is out of range: the model has 10 classes"),
        (np.full(16, -1), "label -1 is negative; expected class ids 0..N-1"),
        (np.zeros((16, 1), np.int64), r"'labels' has shape \[16, 1\]; expected 1-D class ids"),
        (np.full(16, 1.5), r"'labels' has dtype float64; expected integer class ids \(1.5 is not"),
    ],
)
def test_labels_that_are_not_class_ids_are_rejected(labels, match):
    teacher = load_demo()
    data = {"image": _split("train", 16)["image"], "labels": labels}
    with pytest.raises(CalibrationError, match=match):
        recover(teacher, data, config=DistillConfig(mode=RecoveryMode.FINETUNE, epochs=1))
    with pytest.raises(CalibrationError, match=match):
        evaluate_accuracy(teacher, data)


def test_whole_number_float_labels_still_work():
    data = _split("train", 16)
    data["labels"] = data["labels"].astype(np.float32)
    assert evaluate_accuracy(load_demo(), data) is not None
