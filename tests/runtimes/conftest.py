"""Tiny artifacts of every format, built once per session for the runtime tests."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from torchship.artifact import Artifact, Format
from torchship.specs import InputSpec

SPEC = InputSpec(name="x", dtype="float32", shape=(2, 4), dynamic={0: "batch"})


@pytest.fixture(scope="session")
def eager_output():
    """Reference output of a module on a numpy input."""

    def run(module: torch.nn.Module, x: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return module(torch.from_numpy(x)).numpy()

    return run


@pytest.fixture(scope="session")
def tiny_artifacts(tiny_module, tmp_path_factory) -> dict[Format, Artifact]:
    """One artifact per format (dynamic batch), output named `y`."""
    folder = tmp_path_factory.mktemp("tiny")
    example = torch.randn(2, 4)
    paths = {
        Format.ONNX: _export_onnx(tiny_module, example, folder / "tiny.onnx"),
        Format.TORCHSCRIPT: _export_ts(tiny_module, example, folder / "tiny.ts"),
        Format.EXPORTED_PROGRAM: _export_pt2(tiny_module, example, folder / "tiny.pt2"),
    }
    artifacts = {
        fmt: Artifact.create(path, format=fmt, inputs=[SPEC], outputs=["y"])
        for fmt, path in paths.items()
    }
    artifacts[Format.EAGER] = Artifact.eager(tiny_module, inputs=[SPEC], outputs=["y"])
    return artifacts


@pytest.fixture(scope="session")
def fixed_batch_onnx(tiny_artifacts) -> Artifact:
    """The ONNX artifact described with a fixed batch of 2."""
    fixed = InputSpec(name="x", dtype="float32", shape=(2, 4))
    onnx = tiny_artifacts[Format.ONNX]
    return Artifact.create(onnx.path, format=Format.ONNX, inputs=[fixed], outputs=["y"])


def _export_onnx(module, example, path: Path) -> Path:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module,
            (example,),
            str(path),
            dynamo=False,
            input_names=["x"],
            output_names=["y"],
            dynamic_axes={"x": {0: "batch"}, "y": {0: "batch"}},
        )
    return path


def _export_ts(module, example, path: Path) -> Path:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.trace(module, (example,)).save(str(path))
    return path


def _export_pt2(module, example, path: Path) -> Path:
    batch = torch.export.Dim("batch", min=1, max=1024)
    program = torch.export.export(module, (example,), dynamic_shapes={"x": {0: batch}})
    torch.export.save(program, str(path))
    return path
