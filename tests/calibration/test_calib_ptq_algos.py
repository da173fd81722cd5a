"""CLE and bias correction: CLE is function-preserving and evens ranges; bias correction cuts the
mean output error of a per-tensor INT8 conv."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime
import pytest
import torch
from onnx import numpy_helper
from torch import nn

from torchship.calibration import ort_quantize
from torchship.calibration.calibrators import METHODS, compute_ranges
from torchship.calibration.presets import get_preset
from torchship.calibration.ptq_algos import (
    _pairs,
    apply_bias_shifts,
    bias_shifts,
    channel_ranges,
    equalize,
    parse_algos,
)
from torchship.calibration.regions import Graph
from torchship.data import open_data
from torchship.errors import ConfigError
from torchship.loaded import LoadedModel
from torchship.specs import InputSpec


class Chain(nn.Module):
    """conv -> ReLU -> depthwise -> ReLU6 -> conv, with very uneven channel ranges."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 8, 3, padding=1)
        self.dw = nn.Conv2d(8, 8, 3, padding=1, groups=8)
        self.b = nn.Conv2d(8, 4, 1)
        with torch.no_grad():
            self.a.weight.mul_(torch.logspace(-2, 1, 8).reshape(8, 1, 1, 1))

    def forward(self, image):
        return self.b(torch.clamp(self.dw(torch.relu(self.a(image))), 0, 6))


def _onnx(tmp_path, onnx_exporter, module):
    spec = (InputSpec("image", "float32", (4, 3, 16, 16), dynamic={0: "batch"}),)
    artifact = onnx_exporter(LoadedModel(module.eval(), spec, ("out",), source="t"), tmp_path)
    pre = tmp_path / "pre.onnx"
    ort_quantize.preprocess(artifact.path, pre)
    return artifact, pre


def _run(path, x):
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {"image": x})[0]


def test_cle_preserves_fp32_outputs_and_equalizes_ranges(tmp_path, onnx_exporter):
    torch.manual_seed(0)
    _, pre = _onnx(tmp_path, onnx_exporter, Chain())
    out = tmp_path / "cle.onnx"
    info = equalize(pre, out)
    assert info["pairs"] == 2 and info["relu6_rewritten"] == 1
    assert info["mean_channel_range_spread_after"] < info["mean_channel_range_spread_before"]
    x = np.random.default_rng(0).normal(0, 2, (4, 3, 16, 16)).astype(np.float32)
    np.testing.assert_allclose(_run(out, x), _run(pre, x), rtol=1e-4, atol=1e-4)
    g = Graph.load(out)
    conv1 = next(n for n in g.nodes if n.op_type == "Conv")  # conv a -> relu -> depthwise
    dw = next(n for n in g.nodes if g.is_depthwise(n))
    np.testing.assert_allclose(
        channel_ranges(g.weight(conv1), axis=0), channel_ranges(g.weight(dw), axis=0), rtol=1e-3
    )
    assert len(_pairs(Graph.load(pre))) == 2


def test_bias_correction_reduces_mean_output_error(tmp_path, onnx_exporter):
    """Inputs with a large mean make the weights' rounding error a systematic output shift."""
    torch.manual_seed(0)
    conv = nn.Conv2d(16, 8, 3, padding=1)
    _, pre = _onnx(tmp_path, onnx_exporter, nn.Sequential(nn.Conv2d(3, 16, 1), conv))
    rng = np.random.default_rng(0)
    x = (rng.normal(0, 0.3, (64, 3, 16, 16)) + 2.0).astype(np.float32)
    data = open_data({"image": x}, inputs=(InputSpec("image", "float32", (16, 3, 16, 16),
                                                      dynamic={0: "batch"}),))  # fmt: skip
    preset = get_preset("tensorrt")  # S8S8, symmetric per-tensor activations
    ranges = ort_quantize.save_ranges(
        compute_ranges(pre, data, method="minmax", symmetric=True), tmp_path / "r.json"
    )
    method = METHODS.get("minmax").ort_method()
    plain = tmp_path / "q.onnx"
    ort_quantize.quantize_static_qdq(pre, plain, preset=preset, method=method, ranges_cache=ranges)
    shifts = bias_shifts(pre, plain, data)
    assert shifts and all(np.any(s != 0) for s in shifts.values())
    corrected_fp32 = tmp_path / "bc.onnx"
    assert apply_bias_shifts(pre, corrected_fp32, shifts) == len(shifts)
    corrected = tmp_path / "qbc.onnx"
    ort_quantize.quantize_static_qdq(
        corrected_fp32, corrected, preset=preset, method=method, ranges_cache=ranges
    )
    reference = _run(pre, x)
    before = np.abs((_run(plain, x) - reference).mean(axis=(0, 2, 3))).mean()
    after = np.abs((_run(corrected, x) - reference).mean(axis=(0, 2, 3))).mean()
    assert after < before


def test_parse_algos():
    assert parse_algos("bias_correction,cle") == ("cle", "bias-correction")
    assert parse_algos("none") == () and parse_algos(()) == ()
    with pytest.raises(ConfigError, match="valid: cle, bias-correction"):
        parse_algos("adaround")


def test_apply_bias_shifts_skips_fp32_nodes(tmp_path, onnx_exporter):
    _, pre = _onnx(tmp_path, onnx_exporter, Chain())
    g = Graph.load(pre)
    names = [n.name for n in g.nodes if n.op_type == "Conv"]
    shifts = {n: np.ones(g.weight(g.by_name[n]).shape[0]) for n in names}
    assert apply_bias_shifts(pre, tmp_path / "o.onnx", shifts, skip=names[:1]) == len(names) - 1
    model = onnx.load(str(tmp_path / "o.onnx"))
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    first = next(n for n in model.graph.node if n.name == names[0])
    original = numpy_helper.to_array(g.initializers[first.input[2]])
    np.testing.assert_array_equal(inits[first.input[2]], original)


def test_quantize_applies_requested_algos_and_reports_each(tmp_path, demo_onnx, demo_files):
    from torchship.cli.main import main

    report_path = tmp_path / "r.json"
    code = main([
        "quantize", str(demo_onnx.path), "--calib", str(demo_files["calib"]), "--eval",
        str(demo_files["eval"]), "--no-bench", "--no-latency-search", "--cle",
        "--bias-correction", "-o", str(tmp_path / "q"), "--json", str(report_path),
    ])  # fmt: skip
    assert code in (0, 1)  # the budget verdict is not what this checks
    import json

    ptq = json.loads(report_path.read_text())["ptq_algorithms"]
    assert [t["algos"] for t in ptq["tried"]] == [[], ["cle", "bias-correction"]]
    assert ptq["chosen"] == ["cle", "bias-correction"]
    assert ptq["cle"]["pairs"] > 0 and ptq["bias-correction"]["layers"] > 0


def test_quantize_refuses_an_unknown_algo_in_one_line(tmp_path, demo_onnx, demo_files, capsys):
    from torchship.cli.main import main

    code = main([
        "quantize", str(demo_onnx.path), "--calib", str(demo_files["calib"]), "--ptq-algos",
        "adaround", "-o", str(tmp_path / "q"),
    ])  # fmt: skip
    assert code == 2
    assert "--ptq-algos adaround: valid: cle, bias-correction, none" in capsys.readouterr().err
    assert not (tmp_path / "q").exists()


def test_budget_loop_tries_each_algo_set_before_the_fp32_fallback(tmp_path, sensitive_case):
    """Plain INT8 destroys this MLP (an outlier channel): CLE and bias correction are tried
    (they cannot fix it), then the fallback keeps the sensitive layer in FP32."""
    from torchship.calibration import QuantizeOptions, quantize

    artifact, calib, evaluation = sensitive_case
    result = quantize(
        artifact, tmp_path / "out", calib=calib, eval_data=evaluation,
        options=QuantizeOptions(max_drop=1.0, bench=False, latency_search=False),
    )  # fmt: skip
    ptq = result.report["ptq_algorithms"]
    assert [t["algos"] for t in ptq["tried"]] == [
        [],
        ["cle"],
        ["bias-correction"],
        ["cle", "bias-correction"],
    ]
    assert ptq["tried"][0]["drop"] > 50
    assert result.report["fallback"]["excluded_nodes"] == ["/sensitive/Gemm"] and result.passed
