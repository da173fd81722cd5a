"""Encoder INT8: ORT's transformer optimizer first, per-channel dynamic INT8 of the weight
MatMuls (and fused Attention), a static INT8 that keeps LayerNorm/Softmax/GELU float, and
SmoothQuant; on a random-init BERT built from a config (no download)."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest

from torchship.cli import main

pytest.importorskip("transformers")

CONFIG = {
    "vocab_size": 120, "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2,
    "intermediate_size": 128, "max_position_embeddings": 64,
}  # fmt: skip
_FLOAT_REGIONS = {"LayerNormalization", "SkipLayerNormalization", "Softmax", "Gelu", "BiasGelu"}


@pytest.fixture(scope="module")
def encoder(tmp_path_factory):
    """The BERT exported (legacy exporter: the graph ORT's optimizer fuses fully) + data."""
    folder = tmp_path_factory.mktemp("encoder")
    args = ["export", "hf:BertConfig", "--config", json.dumps(CONFIG), "--task",
            "feature-extraction", "--format", "onnx", "--legacy-onnx"]  # fmt: skip
    args += ["-o", str(folder / "fp32")]
    assert main(args) == 0
    rng = np.random.default_rng(0)
    for name, count in (("calib", 32), ("eval", 48)):
        ids = rng.integers(1, CONFIG["vocab_size"], (count, 16)).astype(np.int64)
        mask = np.ones_like(ids)
        mask[::3, 11:] = 0
        np.savez(folder / f"{name}.npz", input_ids=ids, attention_mask=mask,
                 token_type_ids=np.zeros_like(ids))  # fmt: skip
    return folder


def _quantize(encoder, out, *extra) -> dict:
    args = ["quantize", str(encoder / "fp32" / "model.onnx"), "--eval", str(encoder / "eval.npz")]
    code = main([*args, "--no-bench", "--threads", "2", "-o", str(out), *extra])
    report = json.loads((out / "quantize_report.json").read_text())
    assert code == 0, report.get("warnings")
    return report


@pytest.mark.slow
def test_dynamic_encoder_int8_is_fused_integer_and_close_and_leaves_no_litter(
    encoder, tmp_path, monkeypatch
):
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    # --no-latency-search: the fused graph is kept without timing it against the unfused one
    report = _quantize(encoder, tmp_path / "dyn", "--mode", "dynamic", "--no-latency-search")
    fused = report["transformer"]["optimizer"]
    assert fused["applied"] and fused["fusions"].get("Attention", 0) == 2, fused
    assert fused["fusions"].get("SkipLayerNormalization", 0) > 0
    assert report["op_counts"]["integer_ops"] > 0
    assert report["accuracy"]["metric"] == "cosine" and report["accuracy"]["cosine"] > 0.99
    assert list(cwd.iterdir()) == []  # ORT's optimizer and pre-processing wrote in the scratch dir


@pytest.mark.slow
def test_dynamic_encoder_int8_keeps_the_graph_whose_int8_measured_faster(encoder, tmp_path):
    report = _quantize(encoder, tmp_path / "dyn", "--mode", "dynamic")
    timing, optimizer = report["transformer"]["timing"], report["transformer"]["optimizer"]
    assert timing["ran"] and timing["fused_over_unfused_latency"] > 0
    assert optimizer["applied"] == (timing["fused_over_unfused_latency"] <= 1.0), optimizer
    if not optimizer["applied"]:
        assert "measured" in optimizer["reason"]
        assert optimizer["fusions"].get("Attention") == 2  # what was tried stays reported
    assert report["op_counts"]["integer_ops"] > 0


@pytest.mark.slow
def test_static_encoder_int8_keeps_the_normalization_and_softmax_regions_float(encoder, tmp_path):
    out = tmp_path / "static"
    report = _quantize(
        encoder, out, "--mode", "static", "--calib", str(encoder / "calib.npz"),
        "--smoothquant", "off",
    )  # fmt: skip
    assert report["float_regions"].startswith("LayerNorm, Softmax, GELU")
    graph = onnx.load(str(out / "model.int8.onnx")).graph
    dequantized = {n.output[0] for n in graph.node if n.op_type == "DequantizeLinear"}
    weights = {i.name for i in graph.initializer}
    for node in graph.node:
        if node.op_type in _FLOAT_REGIONS:
            fed = [name for name in node.input if name in dequantized and name not in weights]
            assert not fed, (node.op_type, node.name, fed)
    assert any(n.op_type == "DequantizeLinear" for n in graph.node)


@pytest.mark.slow
def test_smoothquant_at_a_given_alpha_is_applied_and_keeps_outputs_close(encoder, tmp_path):
    report = _quantize(
        encoder, tmp_path / "sq", "--mode", "static", "--calib", str(encoder / "calib.npz"),
        "--smoothquant", "0.5",
    )  # fmt: skip
    smooth = report["transformer"]["smoothquant"]
    assert smooth["used"] and smooth["alpha"] == 0.5, smooth
    assert report["accuracy"]["cosine"] > 0.98
