"""Small ONNX MLPs for the regression tests: `light`, and `heavy` that runs the same hidden
layers twice (shared weights), so it does 2x the work without 2x the memory traffic: with
separate weights the heavy model spilled out of L2 and read 3.9x at batch 1."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch


def export_mlp(path: Path, *, passes: int, layers: int = 4, width: int = 256) -> Path:
    torch.manual_seed(0)
    hidden = [torch.nn.Linear(width, width) for _ in range(layers)]
    blocks = [torch.nn.Linear(16, width)] + hidden * passes
    module = torch.nn.Sequential(*blocks, torch.nn.Linear(width, 4)).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module, (torch.randn(8, 16),), str(path), dynamo=False, input_names=["x"],
            output_names=["y"], dynamic_axes={"x": {0: "batch"}, "y": {0: "batch"}},
        )  # fmt: skip
    return path


@pytest.fixture(scope="session")
def mlp_models(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("mlp")
    return {
        "light": export_mlp(folder / "light.onnx", passes=1),
        "heavy": export_mlp(folder / "heavy.onnx", passes=2),
        # ~3.5x: for comparisons across separate runs, where load can shift one side by 50%
        "heavier": export_mlp(folder / "heavier.onnx", passes=4),
    }
