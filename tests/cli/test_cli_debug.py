"""`torchship debug quantize` end to end: table, files, exit codes."""

from __future__ import annotations

import json

import numpy as np
import pytest

from torchship.calibration import QuantizeOptions, quantize
from torchship.cli.main import main
from torchship.exporter import ExportOptions, export_model
from torchship.models import demo_dataset, load_demo


@pytest.fixture(scope="module")
def demo_pair(tmp_path_factory):
    root = tmp_path_factory.mktemp("debug-cli")
    (fp32,) = export_model(
        load_demo(), root / "fp32", formats=["onnx"], options=ExportOptions(dynamo=False)
    )
    images, _ = demo_dataset("test")
    np.savez(root / "data.npz", image=images[:64])
    # latency search off: on a loaded machine it may keep regions (or all) in FP32
    options = QuantizeOptions(target="cpu-x86-vnni", bench=False, latency_search=False)
    result = quantize(fp32.path, root / "int8", calib=root / "data.npz", options=options)
    return fp32.path, result.artifact.path, root / "data.npz"


def run(*argv) -> int:
    return main([str(a) for a in argv])


def test_debug_quantize_prints_the_worst_layers_and_writes_files(demo_pair, tmp_path, capsys):
    fp32, int8, data = demo_pair
    out = tmp_path / "layers"
    code = run("debug", "quantize", fp32, int8, "--data", data, "-o", out, "--json", "-")
    captured = capsys.readouterr()
    assert code == 0, captured.err
    report = json.loads(captured.out)
    assert report["schema"] == "torchship.layers/1" and report["samples"] == 32
    assert report["layers"][0]["module"] == "stem.0"
    assert {p.name for p in out.iterdir()} >= {"layers.json", "layers.md"}
    code = run("debug", "quantize", fp32, int8, "--data", data, "-o", out, "--top", "40",
               "--no-isolate", "--no-profile")  # fmt: skip
    text = capsys.readouterr().out
    assert code == 0 and "stem.0" in text and "SQNR" in text and "written:" in text


def test_debug_quantize_gate_and_bad_input(demo_pair, tmp_path, capsys):
    fp32, int8, data = demo_pair
    out = tmp_path / "layers"
    assert run("debug", "quantize", fp32, int8, "--min-sqnr", "200", "-o", out) == 1
    assert "random" in capsys.readouterr().out  # no --data: said on the console
    assert run("debug", "quantize", fp32, tmp_path / "nope.onnx", "-o", out) == 2
    (tmp_path / "file").write_text("x")
    assert run("debug", "quantize", fp32, int8, "-o", tmp_path / "file") == 2
    assert run("debug", "quantize", fp32, int8, "--samples", "0") == 2
    assert run("debug", "quantize", fp32, int8, "--data", tmp_path / "none.npz", "-o", out) == 2
    assert "none.npz" in capsys.readouterr().err
