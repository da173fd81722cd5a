"""Latency-aware INT8: the region families, the search's rules, and FP32 shipping from the CLI.

Timings are never asserted: the search's timer is injected (a fake that makes INT8 slower).
"""

from __future__ import annotations

import json

import onnx
import pytest
import torch

from torchship.calibration import latency_search
from torchship.calibration.accuracy import Accuracy
from torchship.calibration.ort_quantize import preprocess
from torchship.calibration.regions import Region, find_regions, name_unnamed_nodes
from torchship.cli.main import main
from torchship.loaded import LoadedModel
from torchship.models.mobile import MobileNetV3Style
from torchship.specs import InputSpec


@pytest.fixture(scope="module")
def mobilenet_v3_graph(tmp_path_factory, onnx_exporter):
    torch.manual_seed(0)
    spec = (InputSpec("image", "float32", (2, 3, 32, 32), dynamic={0: "batch"}),)
    model = LoadedModel(MobileNetV3Style(width=0.5).eval(), spec, ("logits",), source="test")
    root = tmp_path_factory.mktemp("mnv3")
    artifact = onnx_exporter(model, root)
    pre = root / "pre.onnx"
    preprocess(artifact.path, pre)
    name_unnamed_nodes(pre)
    return pre


def test_region_finder_finds_se_gates_and_hardswish(mobilenet_v3_graph):
    regions = {r.kind: r for r in find_regions(mobilenet_v3_graph)}
    graph = onnx.load(str(mobilenet_v3_graph)).graph
    ops = {n.name: n.op_type for n in graph.node}
    assert all(n.name for n in graph.node)  # every node named, so each can be excluded
    se = regions["se"]
    se_ops = [ops[n] for n in se.nodes]
    blocks = sum(1 for s in MobileNetV3Style.SETTINGS if s[3])
    assert se_ops.count("GlobalAveragePool") == blocks
    assert se_ops.count("HardSigmoid") == blocks and se_ops.count("Mul") == blocks
    hswish = [ops[n] for n in regions["hardswish"].nodes]
    assert hswish and set(hswish) <= {"HardSigmoid", "Mul", "HardSwish"}
    assert not set(regions["hardswish"].nodes) & set(se.nodes)  # the gates are not hardswish
    assert all(ops[n] == "Conv" for n in regions["depthwise"].nodes)
    assert len(regions["depthwise"].nodes) == len(MobileNetV3Style.SETTINGS)
    assert any(r.kind == "stage" for r in find_regions(mobilenet_v3_graph))


def _accuracy(drop: float) -> Accuracy:
    return Accuracy("agreement", 100, drop, 1 - drop / 100, 0.999)


def _search(ratios, drops=None, *, time_budget_s=60.0):
    regions = [Region("se", "se", ("a", "b")), Region("hswish", "hardswish", ("c",))]
    measured = []

    def measure(path):
        measured.append(path)
        value = ratios[path] if isinstance(ratios, dict) else ratios
        return value.pop(0) if isinstance(value, list) else value

    return latency_search.search(
        regions,
        base_excluded=(),
        build=lambda excluded: ",".join(excluded),  # the "path" names the exclusion set
        measure=measure,
        evaluate=lambda excluded: _accuracy((drops or {}).get(",".join(excluded), 0.0)),
        within=lambda accuracy: accuracy.drop <= 1.0,
        time_budget_s=time_budget_s,
    ), measured


def test_search_never_ships_a_candidate_slower_than_fp32():
    result, _ = _search(1.3)  # every INT8 candidate 1.3x slower than FP32
    assert result.ships_fp32 and "no INT8 candidate beat FP32" in result.reason
    noise, _ = _search(0.98)  # 2% faster is within timing noise: FP32 still ships
    assert noise.ships_fp32
    assert all(r.latency_ratio is None or r.latency_ratio >= 1 for r in result.rows)


def test_search_keeps_a_faster_region_within_budget_and_confirms_it():
    result, measured = _search({"": 1.2, "a,b": 0.7, "a,b,c": 0.9, "c": 1.1})
    assert result.excluded == ("a", "b") and result.regions == ("se",)
    assert measured.count("a,b") == 2  # measured, then confirmed
    assert result.confirmed_ratio == 0.7


def test_search_rejects_a_faster_candidate_over_budget():
    result, _ = _search({"": 0.9, "a,b": 0.5, "c": 0.95, "a,b,c": 0.5}, {"a,b": 5.0, "a,b,c": 5.0})
    assert result.excluded == ()  # plain INT8: faster than FP32, within budget
    assert any(r.verdict == "over the accuracy budget" for r in result.rows)


def test_search_ships_fp32_when_the_confirmation_is_slower():
    result, _ = _search({"": [0.8, 1.05], "a,b": 1.2, "c": 1.2})
    assert result.ships_fp32 and "measured again" in result.reason


def test_search_stops_at_its_time_budget():
    ticks = iter(range(0, 1000, 10))
    regions = [Region(f"r{i}", "stage", (f"n{i}",)) for i in range(5)]
    result = latency_search.search(
        regions, base_excluded=(), build=lambda ex: ",".join(ex), measure=lambda p: 0.9,
        evaluate=lambda ex: _accuracy(0.0), within=lambda a: a.drop <= 1.0, time_budget_s=15,
        clock=lambda: next(ticks),
    )  # fmt: skip
    assert result.stopped.startswith("time budget")
    assert len(result.rows) < 1 + len(regions)


def test_cli_ships_fp32_when_int8_is_slower(tmp_path, demo_onnx, demo_files, monkeypatch, capsys):
    """The injected timer makes every INT8 candidate slower: FP32 ships, exit 0, one clear line,
    and the report and manifest say why."""
    monkeypatch.setattr(latency_search, "measure_ratio", lambda *a, **k: 1.4)
    out, report_path = tmp_path / "q", tmp_path / "report.json"
    code = main([
        "quantize", str(demo_onnx.path), "--calib", str(demo_files["calib"]), "--eval",
        str(demo_files["eval"]), "--target", "cpu-x86-vnni", "--no-bench", "-o", str(out),
        "--json", str(report_path), "--latency-search-time", "10",
    ])  # fmt: skip
    printed = capsys.readouterr().out
    assert code == 0
    assert "shipping the FP32 model: no INT8 candidate beat FP32" in " ".join(printed.split())
    report = json.loads(report_path.read_text())
    assert report["shipped"] == "fp32" and report["latency_search"]["shipped"] == "fp32"
    assert report["accuracy"]["drop"] == 0 and report["passed"]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["artifacts"][0]["precision"] == "fp32"
    shipped = onnx.load(str(out / "model.int8.onnx"))
    assert not {"QuantizeLinear", "DequantizeLinear"} & {n.op_type for n in shipped.graph.node}


def test_no_latency_search_flag(tmp_path, demo_onnx, demo_files, monkeypatch):
    def fail(*a, **k):
        raise AssertionError("measured although --no-latency-search")

    monkeypatch.setattr(latency_search, "measure_ratio", fail)
    report_path = tmp_path / "r.json"
    code = main([
        "quantize", str(demo_onnx.path), "--calib", str(demo_files["calib"]), "--no-bench",
        "--no-latency-search", "-o", str(tmp_path / "q"), "--json", str(report_path),
    ])  # fmt: skip
    assert code == 0
    report = json.loads(report_path.read_text())
    assert report["latency_search"] == {"ran": False, "reason": "--no-latency-search"}
