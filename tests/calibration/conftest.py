"""Shared fixtures: the demo exported to ONNX once, calibration/eval files, helper models."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from torchship.artifact import Artifact
from torchship.exporter import ExportOptions, export_model
from torchship.loaded import LoadedModel
from torchship.models import demo_dataset, load_demo
from torchship.specs import InputSpec


def export_fp32(model: LoadedModel, out: Path) -> Artifact:
    (artifact,) = export_model(model, out, formats=["onnx"], options=ExportOptions(dynamo=False))
    return artifact


@pytest.fixture(scope="session")
def onnx_exporter():
    """export_fp32 as a fixture (test modules do not import conftest)."""
    return export_fp32


@pytest.fixture(scope="session")
def demo_model() -> LoadedModel:
    return load_demo()


@pytest.fixture(scope="session")
def demo_onnx(tmp_path_factory, demo_model) -> Artifact:
    return export_fp32(demo_model, tmp_path_factory.mktemp("demo-onnx"))


@pytest.fixture(scope="session")
def demo_files(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("demo-data")
    train, _ = demo_dataset("train")
    images, labels = demo_dataset("test")
    np.savez(root / "calib.npz", image=train[:128])
    np.savez(root / "eval.npz", image=images[:200], labels=labels[:200])
    return {"calib": root / "calib.npz", "eval": root / "eval.npz"}


class OneSensitiveLayer(nn.Module):
    """MLP whose `sensitive` Linear reads a tensor with one huge outlier channel.

    exp() of channel 0 is ~22000 while the others stay below ~20; the sensitive layer ignores
    channel 0 (zero weights), so FP32 is unaffected, but a per-tensor INT8 scale for its input
    rounds every other channel to zero. Exp is not quantized by ORT, so only keeping
    `sensitive` in FP32 removes that Q/DQ.
    """

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.first = nn.Linear(16, 32)
        self.sensitive = nn.Linear(32, 32)
        self.head = nn.Linear(32, 4)
        with torch.no_grad():
            self.first.weight.mul_(0.5)
            self.first.weight[0].zero_()
            self.first.bias[0] = 10.0
            self.sensitive.weight[:, 0] = 0.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.sensitive(torch.exp(self.first(x)))))


@pytest.fixture(scope="session")
def sensitive_case(tmp_path_factory) -> tuple[Artifact, Path, Path]:
    """(FP32 ONNX, calib .npz, eval .npz with labels = the FP32 model's own predictions)."""
    root = tmp_path_factory.mktemp("sensitive")
    module = OneSensitiveLayer().eval()
    spec = InputSpec("x", "float32", (8, 16), dynamic={0: "batch"})
    model = LoadedModel(module, (spec,), ("logits",), source="test:sensitive")
    artifact = export_fp32(model, root)
    rng = np.random.default_rng(0)
    calib = rng.standard_normal((128, 16)).astype(np.float32)
    evaluation = rng.standard_normal((256, 16)).astype(np.float32)
    labels = model.run({"x": evaluation})["logits"].argmax(axis=1)
    np.savez(root / "calib.npz", x=calib)
    np.savez(root / "eval.npz", x=evaluation, labels=labels.astype(np.int64))
    return artifact, root / "calib.npz", root / "eval.npz"
