"""Dynamic INT8 on a small transformer encoder; FP16 with the fp16 parity profile."""

from __future__ import annotations

import numpy as np
import pytest

from torchship.calibration import QuantizeOptions, quantize
from torchship.exporter import check_parity
from torchship.loaded import LoadedModel
from torchship.models import tiny_encoder, zoo_inputs
from torchship.runtimes.tolerance import tolerance_for


@pytest.fixture(scope="module")
def encoder(tmp_path_factory, onnx_exporter):
    model = LoadedModel(tiny_encoder(), zoo_inputs("tiny_encoder"), ("logits",), source="zoo")
    return model, onnx_exporter(model, tmp_path_factory.mktemp("encoder"))


def _token_batch(n: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(1)
    mask = np.ones((n, 16), np.int64)
    mask[:, 12:] = rng.integers(0, 2, size=(n, 4))
    return {"input_ids": rng.integers(0, 1000, size=(n, 16)), "attention_mask": mask}


def test_dynamic_int8_on_a_transformer_encoder(tmp_path, encoder):
    _, artifact = encoder
    result = quantize(
        artifact, tmp_path / "dyn", eval_data=_token_batch(128),
        options=QuantizeOptions(mode="dynamic", max_drop=5.0, bench=False, threads=2),
    )  # fmt: skip
    assert result.passed, result.report
    assert result.report["mode"] == "dynamic"
    assert result.report["accuracy"]["mode"] == "agreement"
    by_type = result.report["op_counts"]["by_type"]
    integer = {"MatMulInteger", "DynamicQuantizeMatMul", "MatMulIntegerToFloat"}
    assert integer & set(by_type), by_type
    assert not any("convolution-heavy" in w for w in result.warnings)


def test_dynamic_int8_warns_on_a_conv_heavy_model(tmp_path, demo_onnx, demo_files):
    result = quantize(
        demo_onnx, tmp_path / "dyn", eval_data=demo_files["eval"],
        options=QuantizeOptions(mode="dynamic", bench=False, threads=2),
    )  # fmt: skip
    assert any("convolution-heavy" in w for w in result.warnings)
    by_type = result.report["op_counts"]["by_type"]
    assert by_type.get("Conv", 0) + by_type.get("FusedConv", 0) > 0  # convs stay float


def test_fp16_keeps_fp32_io_and_passes_fp16_parity(tmp_path, demo_model, demo_onnx, demo_files):
    result = quantize(
        demo_onnx, tmp_path / "half", eval_data=demo_files["eval"],
        options=QuantizeOptions(precision="fp16", bench=False, threads=2),
    )  # fmt: skip
    artifact = result.artifact
    assert artifact.precision.value == "fp16" and artifact.path.name == "model.fp16.onnx"
    assert result.report["parity"]["passed"] and result.report["parity"]["profile"] == "fp16"
    assert any("GPU" in w for w in result.warnings)
    report = check_parity(demo_model, artifact, profile=tolerance_for("fp16"))
    assert report.passed, report.message()
