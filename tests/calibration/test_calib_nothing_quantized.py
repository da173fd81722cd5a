"""Never "pass" on nothing: an INT8 file without integer kernels, or one the fallback returned
entirely to FP32, fails (exit 1) with the reason and what to try."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

from torchship.calibration import QuantizeOptions, quantize
from torchship.cli.main import main
from torchship.loaded import LoadedModel
from torchship.specs import InputSpec


class ConvOnly(nn.Module):
    """Convolutions and pooling only: dynamic INT8 (MatMul/Gemm) has nothing to quantize."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 4, 3))

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.body(image).mean(dim=(2, 3))


class OnlySensitiveLayer(nn.Module):
    """One Linear reading exp(x): input channel 0 (x ~ 10) dwarfs the rest, which a per-tensor
    INT8 scale rounds to zero. The layer ignores channel 0, so FP32 is fine; keeping the one
    quantizable node in FP32 is the only way into the budget, and leaves nothing INT8."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.head = nn.Linear(8, 4)
        with torch.no_grad():
            self.head.weight[:, 0] = 0.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.exp(x))


@pytest.fixture(scope="module")
def conv_only(tmp_path_factory, onnx_exporter):
    spec = InputSpec("image", "float32", (2, 3, 12, 12), dynamic={0: "batch"})
    model = LoadedModel(ConvOnly().eval(), (spec,), ("features",), source="test:conv")
    return onnx_exporter(model, tmp_path_factory.mktemp("conv"))


@pytest.fixture(scope="module")
def only_sensitive(tmp_path_factory, onnx_exporter):
    root = tmp_path_factory.mktemp("only")
    spec = InputSpec("x", "float32", (4, 8), dynamic={0: "batch"})
    model = LoadedModel(OnlySensitiveLayer().eval(), (spec,), ("logits",), source="test:only")
    artifact = onnx_exporter(model, root)
    rng = np.random.default_rng(0)
    for name, n in (("calib", 64), ("eval", 128)):
        x = rng.standard_normal((n, 8)).astype(np.float32)
        x[:, 0] += 10.0
        np.savez(root / f"{name}.npz", x=x)
    return artifact, root / "calib.npz", root / "eval.npz"


def test_dynamic_int8_without_integer_kernels_fails(tmp_path, conv_only, capsys):
    out = tmp_path / "dyn"
    args = ["quantize", str(conv_only.path), "--mode", "dynamic", "--no-bench", "--threads", "2"]
    assert main([*args, "-o", str(out)]) == 1
    report = json.loads((out / "quantize_report.json").read_text())
    assert report["op_counts"]["integer_ops"] == 0 and report["passed"] is False
    (failure,) = report["failures"]
    assert failure.startswith("no integer kernels after ORT optimization")
    assert "try --mode static with --calib data" in failure
    printed = capsys.readouterr().out
    assert "result: FAIL: no integer kernels after ORT optimization" in printed
    assert json.loads((out / "manifest.json").read_text())["gates"]["passed"] is False


def test_a_fallback_back_to_all_fp32_fails(tmp_path, only_sensitive):
    artifact, calib, evaluation = only_sensitive
    result = quantize(
        artifact, tmp_path / "q", calib=calib, eval_data=evaluation,
        options=QuantizeOptions(bench=False, threads=2, target="cpu-x86-vnni"),
    )  # fmt: skip
    fallback = result.report["fallback"]
    assert fallback["initial_value"] > 1.0  # full INT8 misses the 1-point agreement budget
    assert fallback["all_fp32"] and fallback["excluded_nodes"] == ["/head/Gemm"]
    assert result.report["accuracy"]["passed"]  # the budget holds... on an FP32 model
    assert not result.passed
    assert result.report["failures"][0].startswith(
        "the accuracy fallback kept all 1 quantizable nodes in FP32"
    )
    assert "the artifact is an FP32 model" in result.report["failures"][0]


def test_fp16_is_not_held_to_integer_kernels(tmp_path, conv_only):
    result = quantize(
        conv_only, tmp_path / "half", options=QuantizeOptions(precision="fp16", bench=False)
    )
    assert result.report["failures"] == []
