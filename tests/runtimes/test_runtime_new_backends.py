"""OpenVINO, AOTInductor and ExecuTorch runners: explicit settings, recorded facts, exit 3."""

from __future__ import annotations

import re
import sys

import numpy as np
import pytest
import torch

from torchship.artifact import Format
from torchship.cli.main import main
from torchship.runtimes import BenchConfig, bench_runner, get_runner
from torchship.runtimes.openvino import OpenVinoRunner

needs_openvino = pytest.mark.skipif(
    OpenVinoRunner.unavailable_reason() is not None,
    reason=f"openvino unavailable: {OpenVinoRunner.unavailable_reason()}",
)


def _run(*argv) -> int:
    return main([str(a) for a in argv])


@needs_openvino
def test_openvino_sets_precision_threads_and_one_stream(tiny_artifacts):
    runner = get_runner("openvino")(tiny_artifacts[Format.ONNX], threads=1)
    assert runner.config() == {
        "INFERENCE_PRECISION_HINT": "f32",
        "NUM_STREAMS": 1,
        "PERFORMANCE_HINT": "LATENCY",
        "INFERENCE_NUM_THREADS": 1,
    }
    with runner:
        facts = runner.facts()
    assert facts["inference_precision"] == "f32" and facts["threads"] == 1
    assert facts["streams"] == 1 and facts["openvino"]


@needs_openvino
def test_bench_records_the_precision_openvino_computed_in(tiny_artifacts):
    config = BenchConfig(warmup=1, iters=3, min_time_s=None, threads=1)
    names = ["openvino", "openvino-bf16"]
    if get_runner("openvino-bf16").unavailable_reason() is not None:
        names = names[:1]
    for name in names:
        result = bench_runner(name, tiny_artifacts[Format.ONNX], config=config, batch=2)
        wanted = "bf16" if name.endswith("bf16") else "f32"
        assert result.runtime_facts["inference_precision"] == wanted
        assert result.to_dict()["runtime_facts"]["threads"] == 1
    ort = bench_runner("ort-cpu", tiny_artifacts[Format.ONNX], config=config, batch=2)
    assert "runtime_facts" not in ort.to_dict()  # runners without facts keep their schema


def test_openvino_bf16_is_refused_without_cpu_support(monkeypatch):
    openvino = pytest.importorskip("openvino")

    class NoBf16Core:
        available_devices = ["CPU"]

        def get_property(self, device, name):
            return ["FP32", "INT8"]

    monkeypatch.setattr(openvino, "Core", NoBf16Core)
    reason = get_runner("openvino-bf16").unavailable_reason()
    assert "no BF16 support" in reason and "avx512_bf16 or AMX" in reason
    assert get_runner("openvino").unavailable_reason() is None


def _block_imports(monkeypatch, name: str) -> str:
    """Make the runtime's package unimportable; returns the text its reason must hold."""
    if name == "openvino":
        monkeypatch.setitem(sys.modules, "openvino", None)
        return r"openvino is not installed \(pip install torchship\[openvino\]\)"
    if name == "executorch":
        monkeypatch.setitem(sys.modules, "executorch.runtime", None)
        return r"executorch is not installed \(pip install torchship\[executorch\]\)"
    monkeypatch.delattr(torch._inductor, "aoti_load_package")
    return "has no AOTInductor loader"


@pytest.mark.parametrize(
    ("name", "file"), [("openvino", "m.onnx"), ("executorch", "m.pte"), ("aoti", "m.aoti.pt2")]
)
def test_unavailable_runtime_exits_3(name, file, monkeypatch, tmp_path, capsys, tiny_artifacts):
    path = tmp_path / file
    path.write_bytes(tiny_artifacts[Format.ONNX].path.read_bytes())  # never loaded
    reason = _block_imports(monkeypatch, name)
    code = _run("bench", path, "--runtime", name, "--input", "x:2x4", "--iters", "1")
    err = capsys.readouterr().err
    assert code == 3, err
    assert f"runtime '{name}' is not available" in err and "Traceback" not in err
    assert re.search(reason, " ".join(err.split()))


def test_quantize_for_xnnpack_without_executorch_exits_3(monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, "executorch.runtime", None)
    calib = tmp_path / "calib.npz"
    code = _run("quantize", "demo", "--target", "xnnpack", "--calib", calib, "-o", tmp_path / "q")
    err = capsys.readouterr().err
    assert code == 3 and "runtime 'executorch' is not available" in err
    assert not (tmp_path / "q").exists()


def test_doctor_lists_the_new_runtimes_and_why(monkeypatch, capsys):
    import json

    monkeypatch.setitem(sys.modules, "openvino", None)
    assert _run("doctor", "--json", "-") == 0
    facts = json.loads(capsys.readouterr().out)
    runtimes = facts["runtimes"]
    assert {"openvino", "openvino-bf16", "aoti", "executorch"} <= set(runtimes)
    assert runtimes["openvino"] == {
        "available": False,
        "reason": "openvino is not installed (pip install torchship[openvino])",
    }
    assert set(facts["aoti_compiler"]) == {"available", "reason"}


@pytest.mark.slow
def test_executorch_threads_are_set_before_load_and_restored(tiny_built):
    from torchship.runtimes.executorch import _thread_count

    _, artifact = tiny_built(Format.EXECUTORCH)
    before = _thread_count()
    wanted = 1 if before != 1 else 2
    with get_runner("executorch")(artifact, threads=wanted) as runner:
        assert runner.facts()["threads"] == wanted
        for _ in range(3):
            runner.infer({"x": np.zeros((8, 4), np.float32)})
    assert _thread_count() == before
