"""The demo model and its ONNX export (legacy exporter: fast), shared by the step tests."""

from __future__ import annotations

import pytest

from torchship.artifact import Artifact
from torchship.exporter import ExportOptions, export_model
from torchship.loaded import LoadedModel
from torchship.models import load_demo
from torchship.pipeline import PipelineState


@pytest.fixture(scope="session")
def demo_model() -> LoadedModel:
    return load_demo()


@pytest.fixture(scope="session")
def demo_onnx(tmp_path_factory, demo_model) -> Artifact:
    out = tmp_path_factory.mktemp("demo-onnx")
    (artifact,) = export_model(
        demo_model, out, formats=["onnx"], options=ExportOptions(dynamo=False)
    )
    return artifact


@pytest.fixture
def staged_state(tmp_path):
    """staged_state(**fields) -> a PipelineState whose staging folder is tmp_path/"stage"."""

    def make(**fields) -> PipelineState:
        stage = tmp_path / "stage"
        stage.mkdir(exist_ok=True)
        return PipelineState(bundle_dir=tmp_path / "bundle", stage=stage, **fields)

    return make
