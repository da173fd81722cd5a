"""The per-layer error report: ranks layers the way quantizing one layer alone does (the hand
check: ORT's `nodes_to_quantize=[layer]`), maps nodes to PyTorch modules, times them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime
import pytest
import torch
from torch import nn

from torchship.calibration import QuantizeOptions, get_preset, quantize
from torchship.calibration.debug_layers import compare_files
from torchship.calibration.layer_files import write_layer_files
from torchship.calibration.node_profile import _attribute
from torchship.calibration.ort_quantize import preprocess, quiet_ort
from torchship.errors import ConfigError, ModelLoadError
from torchship.loaded import LoadedModel
from torchship.onnx_scopes import NodeOrigin, node_origin
from torchship.specs import InputSpec

PRESET = "cpu-x86-vnni"  # U8 activations, S8 per-channel weights, no reduce_range


def _only_one_layer(fp32: Path, node: str, calib: dict, feeds: dict, tmp: Path) -> float:
    """Output SQNR (dB) of `fp32` with only `node` quantized by ORT, calibrated on `calib`."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, quantize_static

    preset = get_preset(PRESET)
    pre, one = tmp / "pre.onnx", tmp / "one.onnx"
    preprocess(fp32, pre)
    count = len(next(iter(calib.values())))

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.batches = iter(
                {k: v[i : i + 8] for k, v in calib.items()} for i in range(0, count, 8)
            )

        def get_next(self):
            return next(self.batches, None)

    with quiet_ort():
        quantize_static(
            str(pre), str(one), Reader(), quant_format=QuantFormat.QDQ,
            per_channel=preset.per_channel, activation_type=preset.activations.to_ort(),
            weight_type=preset.weights.to_ort(), nodes_to_quantize=[node],
        )  # fmt: skip

    def run(path: Path) -> np.ndarray:
        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        return session.run(None, feeds)[0].astype(np.float64)

    reference, got = run(fp32), run(one)
    return float(20 * np.log10(np.linalg.norm(reference) / np.linalg.norm(reference - got)))


def _hand_check(report, fp32: Path, calib: dict, feeds: dict, tmp: Path) -> tuple:
    """(top row, its hand-checked SQNR, bottom quantizable row, its hand-checked SQNR)."""
    ranked = report.ranked()
    top = ranked[0]
    # quantized weight layers only (an encoder's Q·Kᵀ MatMuls stay float: no isolated figure)
    weighted = [r for r in ranked if r.origin.op_type in ("Conv", "Gemm", "MatMul")]
    bottom = [r for r in weighted if r.alone_sqnr_db is not None][-1]
    assert top.alone_sqnr_db is not None
    return (
        top, _only_one_layer(fp32, top.origin.node, calib, feeds, tmp),
        bottom, _only_one_layer(fp32, bottom.origin.node, calib, feeds, tmp),
    )  # fmt: skip


@pytest.fixture(scope="module")
def demo_int8(demo_onnx, demo_files, tmp_path_factory):
    options = QuantizeOptions(target=PRESET, bench=False, latency_search=False)  # the INT8 file
    out = tmp_path_factory.mktemp("demo-int8")
    return quantize(demo_onnx.path, out, calib=demo_files["calib"], options=options)


def test_demo_top_layer_costs_more_than_a_bottom_one_when_quantized_alone(
    demo_onnx, demo_files, demo_int8, tmp_path
):
    result = demo_int8
    summary = result.report["layers"]
    assert {"layers.json", "layers.md"} <= set(summary["files"]), summary
    assert all((result.out_dir / name).is_file() for name in summary["files"])
    assert summary["worst"][0]["module"]

    report = compare_files(
        demo_onnx.path, result.artifact.path, data=demo_files["eval"], profile=False
    )
    assert not report.random_inputs and report.samples == 32
    assert report.outputs["logits"]["sqnr_db"] > 20
    calib = dict(np.load(demo_files["calib"]))
    feeds = {"image": np.load(demo_files["eval"])["image"][:32]}
    top, top_sqnr, bottom, bottom_sqnr = _hand_check(report, demo_onnx.path, calib, feeds, tmp_path)
    # the legacy exporter's node names map back to the module path
    assert top.origin.module == "stem.0", top
    assert top_sqnr < bottom_sqnr - 3, (top, top_sqnr, bottom, bottom_sqnr)
    # same scales (same data, minmax) as the hand check: the same figure
    assert abs(top.alone_sqnr_db - top_sqnr) < 1.5, (top.alone_sqnr_db, top_sqnr)


class TinyEncoder(nn.Module):
    """A random-init BERT (hidden 64, 2 layers) with mean pooling: a sentence embedding."""

    def __init__(self) -> None:
        super().__init__()
        from transformers import BertConfig, BertModel

        torch.manual_seed(0)
        config = BertConfig(
            vocab_size=100, hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
            intermediate_size=128, max_position_embeddings=32,
        )  # fmt: skip
        self.bert = BertModel(config).eval()

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * mask).sum(1) / mask.sum(1)


@pytest.mark.slow
def test_transformer_top_layer_costs_more_than_a_bottom_one(onnx_exporter, tmp_path, monkeypatch):
    pytest.importorskip("transformers")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    rng = np.random.default_rng(0)
    ids = rng.integers(1, 100, (64, 16)).astype(np.int64)
    mask = np.ones((64, 16), np.int64)
    mask[::3, 12:] = 0
    specs = tuple(
        InputSpec(name, "int64", (4, 16), dynamic={0: "batch"})
        for name in ("input_ids", "attention_mask")
    )
    example = {"input_ids": ids[:4], "attention_mask": mask[:4]}
    model = LoadedModel(TinyEncoder().eval(), specs, ("embedding",), source="t", example=example)
    fp32 = onnx_exporter(model, tmp_path / "fp32")
    data = {"input_ids": ids, "attention_mask": mask}
    np.savez(tmp_path / "tokens.npz", **data)
    # the debugger on the graph as exported: no fusions, no SmoothQuant rescaling to compare
    options = QuantizeOptions(
        target=PRESET, bench=False, max_drop=100.0, transformer_opt=False, smoothquant="off"
    )
    result = quantize(fp32.path, tmp_path / "int8", calib=tmp_path / "tokens.npz", options=options)

    report = compare_files(fp32.path, result.artifact.path, data=tmp_path / "tokens.npz",
                           profile=False)  # fmt: skip
    top, top_sqnr, bottom, bottom_sqnr = _hand_check(report, fp32.path, data, data, tmp_path)
    assert top.origin.module.startswith("bert.encoder.layer."), top
    assert top_sqnr < bottom_sqnr - 3, (top, top_sqnr, bottom, bottom_sqnr)
    assert abs(top.alone_sqnr_db - top_sqnr) < 1.5, (top.alone_sqnr_db, top_sqnr)


def test_random_inputs_say_so_and_files_are_written(demo_onnx, demo_int8, tmp_path):
    report = compare_files(demo_onnx.path, demo_int8.artifact.path, samples=8)
    assert report.random_inputs and "random" in report.data
    assert report.totals_us["fp32"] > 0 and report.totals_us["quantized"] > 0
    timed = [r for r in report.rows if r.quant_us is not None]
    assert len(timed) >= 10  # kernels attributed to FP32 nodes, not left in `other`
    written = write_layer_files(report, tmp_path / "out")
    assert {p.name for p in written} >= {"layers.json", "layers.md"}
    assert "random inputs" in (tmp_path / "out" / "layers.md").read_text()


def test_mismatched_or_missing_models_are_refused(demo_onnx, sensitive_case, tmp_path):
    other, _, _ = sensitive_case
    with pytest.raises(ConfigError, match="takes inputs"):
        compare_files(demo_onnx.path, other.path)
    with pytest.raises(ModelLoadError, match="no such file"):
        compare_files(demo_onnx.path, tmp_path / "missing.onnx")


def test_module_names_from_dynamo_metadata_legacy_names_and_weights():
    node = onnx.helper.make_node("Relu", ["a"], ["b"], name="node_relu_3")
    for key, value in (
        ("pkg.torch.onnx.name_scopes", "['', 'stages', 'stages.0', 'stages.0.1.relu', 'relu_3']"),
        ("pkg.torch.onnx.class_hierarchy",
         "['Net', 'Sequential', 'Sequential', 'torch.nn.modules.activation.ReLU', 'aten.relu']"),
    ):  # fmt: skip
        prop = node.metadata_props.add()
        prop.key, prop.value = key, value
    assert node_origin(node) == NodeOrigin("node_relu_3", "Relu", "stages.0.1.relu", "ReLU")
    legacy = onnx.helper.make_node("Conv", ["x", "w"], ["y"], name="/layer1/layer1.0/conv1/Conv")
    assert node_origin(legacy).module == "layer1.0.conv1"
    folded = onnx.helper.make_node("Conv", ["x", "stem.0.weight"], ["y"], name="node_Conv_1")
    assert node_origin(folded).module == "stem.0"
    assert node_origin(onnx.helper.make_node("Add", ["x", "y"], ["z"], name="add")).module == ""


def test_dynamo_export_carries_module_names(tmp_path):
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2)).eval()
    path = tmp_path / "m.onnx"
    torch.onnx.export(model, (torch.randn(2, 4),), str(path), dynamo=True, verbose=False)
    modules = {node_origin(n).module for n in onnx.load(str(path)).graph.node}
    assert {"0", "1", "2"} <= modules, modules


def test_profile_events_are_attributed_to_fp32_nodes():
    nodes = {n: NodeOrigin(n, "Conv", "m") for n in ("/a/Conv", "node_relu_1")}
    tensors = {"relu_1": nodes["node_relu_1"], "/a/Conv_output_0": nodes["/a/Conv"]}
    events = [
        {"name": "/a/Conv_token_3_kernel_time", "dur": 10, "args": {"op_name": "QLinearConv"}},
        {"name": "relu_1_nchwc_kernel_time", "dur": 4, "args": {"op_name": "Conv"}},
        {"name": "/a/Conv_output_0_QuantizeLinear_kernel_time", "dur": 2,
         "args": {"op_name": "QuantizeLinear"}},
        {"name": "Transpose_kernel_time", "dur": 6, "args": {"op_name": "Transpose"}},
    ]  # fmt: skip
    times = _attribute(events, nodes, tensors, runs=2)
    assert times.compute_us == {"/a/Conv": 5.0, "node_relu_1": 2.0}
    assert times.qdq_us == {"/a/Conv": 1.0}
    assert times.other_us == {"Transpose (Transpose)": 3.0}
    assert times.total_us == 11.0
