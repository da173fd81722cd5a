"""A small demo pipeline (ONNX + TorchScript, short timings) and a helper to write configs."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from torchship.pipeline import load_pipeline, run_pipeline

FAST_PIPELINE = """
[pipeline]
name = "demo"
version = "1.0"
output = "dist"

[model]
source = "demo"

[export]
formats = ["onnx", "torchscript"]
legacy_onnx = {legacy}

[bench]
batches = [8]
min_time_s = 0.5  # >= 20 samples a row even at 25 ms a call: baseline verdicts conclusive
warmup = 1
threads = 1

[gates]
max_accuracy_drop = 0.5
{extra_gates}
"""


def write_pipeline(
    folder: Path, *, extra_gates: str = "", text: str | None = None, legacy: bool = True
) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "pipeline.toml"
    body = (
        text
        if text is not None
        else FAST_PIPELINE.format(extra_gates=extra_gates, legacy=str(legacy).lower())
    )
    path.write_text(textwrap.dedent(body))
    return path


@pytest.fixture(scope="session")
def pipeline_file():
    """write_pipeline(folder, *, extra_gates="", text=None, legacy=True) -> pipeline.toml path."""
    return write_pipeline


@pytest.fixture(scope="session")
def demo_bundle(tmp_path_factory) -> Path:
    """A passing bundle, built once; tests that alter it work on a copy."""
    path = write_pipeline(tmp_path_factory.mktemp("pipeline"))
    result = run_pipeline(load_pipeline(path))
    assert result.passed
    return result.bundle
