"""The evaluator: the outputs, and accuracy, of any artifact on a data set through its Runner.

(docs/design.md, "The evaluator")
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from torchship.artifact import Artifact
from torchship.data import LABELS_KEY, ShortBatch, open_data, top1_accuracy
from torchship.runtimes.base import get_runner

__all__ = ["evaluate_top1"]


def evaluate_top1(
    runtime: str, artifact: Artifact, feeds: Mapping[str, np.ndarray], labels: np.ndarray
) -> float:
    """Top-1 accuracy of `artifact` run through `runtime` on a labelled set.

    Batches come from the calibration readers: checked against the artifact's inputs, and at a
    fixed batch axis the last one is padded (the padding rows' outputs are dropped).
    """
    data = open_data({**feeds, LABELS_KEY: labels}, inputs=artifact.inputs)
    logits = []
    with get_runner(runtime)(artifact) as runner:
        for batch in data.batches(short=ShortBatch.PAD):
            output = next(iter(runner.infer(batch.feeds).values()))
            logits.append(output[: batch.samples])
    return top1_accuracy(np.concatenate(logits), labels)
