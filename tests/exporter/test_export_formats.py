"""Each exporter writes a working artifact that matches eager PyTorch."""

from __future__ import annotations

import logging

import onnx
import pytest
import torch
from torch import nn

from torchship.artifact import Format
from torchship.errors import ConfigError, ExportError
from torchship.exporter import (
    EXPORTERS,
    ExportOptions,
    export_model,
    onnx_export,
    require_parity,
)
from torchship.loaded import LoadedModel
from torchship.onnx_io import onnx_io
from torchship.specs import InputSpec

ALL_FORMATS = ["torchscript", "onnx", "exported-program"]


class SmallNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.fc = nn.Linear(4, 5)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.conv(image)).mean(dim=(2, 3)))


class TinyEncoder(nn.Module):
    """Embedding + masked self-attention + head; takes int64 input_ids and attention_mask."""

    def __init__(self, vocab: int = 40, width: int = 16) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, width)
        self.qkv = nn.Linear(width, 3 * width)
        self.head = nn.Linear(width, 3)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor):
        h = self.embed(input_ids)
        q, k, v = self.qkv(h).chunk(3, dim=-1)
        scores = q @ k.transpose(1, 2) / 4.0
        scores = scores.masked_fill(attention_mask[:, None, :] == 0, -1e4)
        h = h + torch.softmax(scores, dim=-1) @ v
        return self.head(h.mean(dim=1)), h


def small_model(*, dynamic_batch: bool = False) -> LoadedModel:
    torch.manual_seed(0)
    dynamic = {0: "batch"} if dynamic_batch else {}
    spec = InputSpec("image", "float32", (1, 3, 8, 8), dynamic)
    return LoadedModel(SmallNet().eval(), (spec,), ("logits",), source="test")


def encoder_model() -> LoadedModel:
    torch.manual_seed(0)
    dims = {0: "batch", 1: "seq"}
    specs = (
        InputSpec("input_ids", "int64", (1, 6), dims, value_range=(0, 40)),
        InputSpec("attention_mask", "int64", (1, 6), dims, value_range=(0, 2)),
    )
    return LoadedModel(TinyEncoder().eval(), specs, ("logits", "hidden"), source="test")


@pytest.fixture(scope="module")
def dynamic_artifacts(tmp_path_factory):
    model = small_model(dynamic_batch=True)
    out = tmp_path_factory.mktemp("dynamic")
    return model, export_model(model, out, formats=ALL_FORMATS)


@pytest.mark.parametrize("fmt", ALL_FORMATS)
def test_each_format_exports_and_matches_eager(dynamic_artifacts, fmt):
    model, artifacts = dynamic_artifacts
    artifact = next(a for a in artifacts if a.format is Format(fmt))
    assert artifact.path.name == f"model{Format(fmt).suffix}"
    assert artifact.sha256 and artifact.path.is_file()
    report = require_parity(model, artifact)
    cases = {c.case for c in report.cases}
    assert "batch=3 input" in cases and "random input #3" in cases
    assert any(c.shape[0] == 3 for c in report.cases)


def test_export_leaves_only_the_artifacts(dynamic_artifacts):
    _, artifacts = dynamic_artifacts
    names = sorted(p.name for p in artifacts[0].path.parent.iterdir())
    assert names == ["model.onnx", "model.pt2", "model.ts"]


def test_onnx_has_named_dynamic_batch_and_passes_checker(dynamic_artifacts):
    _, artifacts = dynamic_artifacts
    artifact = next(a for a in artifacts if a.format is Format.ONNX)
    assert artifact.details["exporter"] == "dynamo"
    onnx.checker.check_model(str(artifact.path), full_check=True)
    specs, outputs = onnx_io(artifact.path)
    assert [(s.name, s.dtype, s.dynamic) for s in specs] == [("image", "float32", {0: "batch"})]
    assert outputs == ["logits"]
    graph = onnx.load(str(artifact.path)).graph
    assert graph.output[0].type.tensor_type.shape.dim[0].dim_param == "batch"


def test_static_model_exports_without_resized_case(tmp_path):
    model = small_model()
    (artifact,) = export_model(model, tmp_path, formats=["torchscript"])
    report = require_parity(model, artifact, num_random=1)
    assert [c.case for c in report.cases] == ["example input", "random input #1"]
    assert report.to_dict()["passed"] is True


def test_torchscript_script_option(tmp_path):
    model = small_model()
    options = ExportOptions(script=True)
    (artifact,) = export_model(model, tmp_path, formats=["torchscript"], options=options)
    assert artifact.details["exporter"] == "torch.jit.script"
    require_parity(model, artifact, num_random=1)


def test_transformer_encoder_exports_to_every_format(tmp_path):
    model = encoder_model()
    artifacts = export_model(model, tmp_path, formats=ALL_FORMATS)
    for artifact in artifacts:
        report = require_parity(model, artifact, num_random=2)
        assert any(c.case == "batch=3 seq=7 input" for c in report.cases)
    specs, outputs = onnx_io(tmp_path / "model.onnx")
    assert [s.dynamic for s in specs] == [{0: "batch", 1: "seq"}] * 2
    assert [s.dtype for s in specs] == ["int64", "int64"]
    assert outputs == ["logits", "hidden"]


def test_legacy_exporter_names_output_dims(tmp_path):
    model = encoder_model()
    options = ExportOptions(dynamo=False)
    (artifact,) = export_model(model, tmp_path, formats=["onnx"], options=options)
    assert artifact.details["exporter"] == "legacy"
    hidden = onnx.load(str(artifact.path)).graph.output[1]
    dims = [d.dim_param or d.dim_value for d in hidden.type.tensor_type.shape.dim]
    assert dims[:2] == ["batch", "seq"]
    require_parity(model, artifact, num_random=1)


def test_dynamo_failure_falls_back_to_legacy_with_warning(tmp_path, monkeypatch, caplog):
    def broken(*args, **kwargs):
        raise RuntimeError("dynamo cannot trace this\nsecond line")

    monkeypatch.setattr(onnx_export, "export_onnx_dynamo", broken)
    model = small_model(dynamic_batch=True)
    with caplog.at_level(logging.WARNING, logger="torchship.exporter.onnx_export"):
        (artifact,) = export_model(model, tmp_path, formats=["onnx"])
    assert artifact.details["exporter"] == "legacy"
    assert "dynamo cannot trace this" in caplog.text and "second line" not in caplog.text
    require_parity(model, artifact, num_random=1)


def test_dynamo_required_failure_is_export_error(tmp_path, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("unsupported op foo")

    monkeypatch.setattr(onnx_export, "export_onnx_dynamo", broken)
    with pytest.raises(ExportError, match="dynamo ONNX export failed: unsupported op foo"):
        export_model(small_model(), tmp_path, formats=["onnx"], options=ExportOptions(dynamo=True))
    assert list(tmp_path.iterdir()) == []


class Broken(nn.Module):
    def forward(self, image: torch.Tensor) -> torch.Tensor:
        raise ValueError("boom in forward\nmore detail")


@pytest.mark.parametrize("fmt", ["torchscript", "exported-program"])
def test_failed_export_leaves_no_file(tmp_path, fmt):
    spec = InputSpec("image", "float32", (1, 3))
    model = LoadedModel(Broken(), (spec,), ("y",), source="test")
    with pytest.raises(ExportError, match=rf"{fmt} export of model\.\w+ failed: boom in forward$"):
        export_model(model, tmp_path, formats=[fmt])
    assert list(tmp_path.iterdir()) == []


def test_failed_onnx_export_leaves_no_file(tmp_path):
    spec = InputSpec("image", "float32", (1, 3))
    model = LoadedModel(Broken(), (spec,), ("y",), source="test")
    with pytest.raises(ExportError, match="onnx export of model.onnx failed: boom in forward"):
        export_model(model, tmp_path, formats=["onnx"], options=ExportOptions(dynamo=False))
    assert list(tmp_path.iterdir()) == []


def test_unknown_format_lists_valid_ones(tmp_path):
    with pytest.raises(ConfigError, match="unknown format 'tflite'; valid: .*onnx.*torchscript"):
        export_model(small_model(), tmp_path, formats=["onnx", "tflite"])
    assert list(tmp_path.iterdir()) == []
    assert set(ALL_FORMATS) <= set(EXPORTERS.names())


def test_no_format_is_config_error(tmp_path):
    with pytest.raises(ConfigError, match="no export format given; valid:"):
        export_model(small_model(), tmp_path, formats=[])


class UnusedInput(nn.Module):
    def forward(self, x: torch.Tensor, unused: torch.Tensor) -> torch.Tensor:
        return x * 2


def test_dropped_input_is_reported(tmp_path):
    specs = (InputSpec("x", "float32", (2, 3)), InputSpec("unused", "float32", (2, 3)))
    model = LoadedModel(UnusedInput(), specs, ("y",), source="test")
    options = ExportOptions(dynamo=False)
    with pytest.raises(ExportError, match="the exported graph has no input 'unused'"):
        export_model(model, tmp_path, formats=["onnx"], options=options)
    assert list(tmp_path.iterdir()) == []


def _saved_pt2(tmp_path) -> LoadedModel:
    """A model loaded back from a `.pt2` file: its module refuses `.eval()`."""
    from torchship.sources import load_model

    model = small_model(dynamic_batch=True)
    (artifact,) = export_model(model, tmp_path, formats=["exported-program"])
    return load_model(str(artifact.path))


def test_saved_pt2_exports_to_onnx_and_torchscript(tmp_path):
    model = _saved_pt2(tmp_path / "pt2")
    with pytest.raises(NotImplementedError):
        model.module.eval()  # the torch behaviour every exporter must tolerate
    artifacts = export_model(model, tmp_path / "out", formats=["onnx", "torchscript"])
    for artifact in artifacts:
        require_parity(model, artifact, num_random=1)


@pytest.mark.parametrize("opset", [0, 6, 99, True])
def test_unsupported_opset_is_config_error(opset):
    match = rf"--opset {opset}: not a supported ONNX opset; valid: 7\.\."
    with pytest.raises(ConfigError, match=match):
        ExportOptions(opset=opset)


def test_opset_the_dynamo_exporter_cannot_write_falls_back_to_legacy(tmp_path, caplog):
    # Below opset 18 the dynamo exporter tries a version conversion and keeps 18 when it fails.
    model = small_model()
    with caplog.at_level(logging.WARNING, logger="torchship.exporter.onnx_export"):
        options = ExportOptions(opset=11)
        (artifact,) = export_model(model, tmp_path, formats=["onnx"], options=options)
    assert onnx_export.onnx_opset(artifact.path) == 11
    assert artifact.details["opset"] == 11
    if artifact.details["exporter"] == "legacy":
        assert "not the requested 11" in caplog.text


def test_opset_mismatch_with_the_dynamo_exporter_required_is_export_error(tmp_path, monkeypatch):
    def wrong_opset(model, path, *, opset):
        onnx_export.export_onnx_legacy(model, path, opset=opset + 1)

    monkeypatch.setattr(onnx_export, "export_onnx_dynamo", wrong_opset)
    options = ExportOptions(opset=17, dynamo=True)
    match = "dynamo ONNX exporter wrote opset 18, not the requested 17"
    with pytest.raises(ExportError, match=match):
        export_model(small_model(), tmp_path, formats=["onnx"], options=options)
    assert list(tmp_path.iterdir()) == []
