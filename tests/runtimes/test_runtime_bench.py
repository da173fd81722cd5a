from __future__ import annotations

import json
import logging
import types

import pytest
import torch

from torchship.artifact import Artifact, Format
from torchship.errors import BackendUnavailableError, ConfigError
from torchship.runtimes import (
    BenchConfig,
    BenchDocument,
    BenchResult,
    base,
    bench,
    bench_document,
    bench_many,
    bench_runner,
    load_bench_document,
)
from torchship.runtimes.bench import feeds_for_batch
from torchship.runtimes.torch_cuda import ComputeEventTimer
from torchship.specs import InputSpec

FAST = BenchConfig(warmup=1, iters=5, batches=(1,))
RESULT_KEYS = {
    "runtime", "artifact", "sha256", "format", "precision", "batch", "threads", "latency_ms",
    "throughput_per_s", "cold_start_ms", "peak_rss_mb", "samples_ms", "warmup", "iters", "timing",
}  # fmt: skip


def test_bench_runner_fills_every_field(tiny_artifacts):
    onnx = tiny_artifacts[Format.ONNX]
    seen = []
    result = bench_runner("ort-cpu", onnx, config=FAST, batch=3, progress=seen.append)
    data = result.to_dict()
    assert set(data) == RESULT_KEYS
    assert data["sha256"] == onnx.sha256 and data["format"] == "onnx"
    assert data["batch"] == 3 and data["iters"] == 5 and len(data["samples_ms"]) == 5
    assert seen == [1, 2, 3, 4, 5]
    assert data["timing"] == {"clock": "host-wall", "includes_copies": True}
    assert data["cold_start_ms"] > 0 and data["peak_rss_mb"] > 0
    assert data["throughput_per_s"] == pytest.approx(3e3 / data["latency_ms"]["mean"], rel=1e-3)
    assert BenchResult.from_dict(json.loads(json.dumps(data))) == result


def test_fixed_batch_mismatch_names_the_input(fixed_batch_onnx):
    with pytest.raises(ConfigError, match=r"input 'x': batch 4 requested but axis 0 is fixed at 2"):
        bench_runner("ort-cpu", fixed_batch_onnx, config=FAST, batch=4)
    assert bench_runner("ort-cpu", fixed_batch_onnx, config=FAST, batch=2).batch == 2


def test_unavailable_runtime_is_refused(tiny_artifacts):
    with pytest.raises(BackendUnavailableError, match="runtime 'ort-trt' is not available"):
        bench_runner("ort-trt", tiny_artifacts[Format.ONNX], config=FAST, batch=1)


def test_noisy_timing_is_logged(tiny_artifacts, monkeypatch, caplog):
    monkeypatch.setattr("torchship.runtimes.bench.measure", lambda fn, **_: [1.0, 1.0, 1.0, 10.0])
    with caplog.at_level(logging.WARNING, logger="torchship.runtimes.bench"):
        bench_runner("torch", tiny_artifacts[Format.EAGER], config=FAST, batch=2)
    assert "noisy timing" in caplog.text


def test_bench_many_pairs_runtimes_with_formats(tiny_artifacts):
    config = BenchConfig(warmup=0, iters=3, batches=(1, 2))
    artifacts = [tiny_artifacts[Format.ONNX], tiny_artifacts[Format.TORCHSCRIPT]]
    results = bench_many(artifacts, runtimes=["ort-cpu", "torchscript"], config=config)
    assert [(r.runtime, r.batch) for r in results] == [
        ("ort-cpu", 1), ("ort-cpu", 2), ("torchscript", 1), ("torchscript", 2),
    ]  # fmt: skip
    defaults = bench_many([tiny_artifacts[Format.EXPORTED_PROGRAM]], config=FAST)
    assert [r.runtime for r in defaults] == ["torch"]
    with pytest.raises(ConfigError, match="none of the runtimes torchscript runs a onnx"):
        bench_many([tiny_artifacts[Format.ONNX]], runtimes=["torchscript"], config=FAST)


def test_bench_document_round_trip(tiny_artifacts, tmp_path):
    result = bench_runner("torch", tiny_artifacts[Format.EAGER], config=FAST, batch=1)
    typed = bench_document([result])
    document = typed.to_dict()
    assert {"schema", "created", "fingerprint", "machine", "software", "results"} <= set(document)
    assert document["schema"] == "torchship.bench/1"
    assert set(document["results"][0]) == RESULT_KEYS
    path = tmp_path / "bench.json"
    path.write_text(json.dumps(document))
    assert load_bench_document(path).results[0].runtime == "torch"
    assert load_bench_document(path) == typed and BenchDocument.from_dict(document) == typed
    # the JSON keeps its key order: documents diff cleanly against older ones
    assert list(document) == ["schema", "created", "fingerprint", "machine", "software", "results"]
    assert list(document["results"][0]) == [
        "runtime", "artifact", "sha256", "format", "precision", "batch", "threads", "latency_ms",
        "throughput_per_s", "cold_start_ms", "peak_rss_mb", "samples_ms", "warmup", "iters",
        "timing",
    ]  # fmt: skip
    assert typed.results[0].p50_ms == document["results"][0]["latency_ms"]["p50"]


def test_a_trimmed_document_reads_with_what_it_has():
    entry = {
        "runtime": "ort-cpu", "artifact": "m.onnx", "sha256": "0" * 64, "batch": 1,
        "latency_ms": {"p50": 2.0}, "samples_ms": [2.0, 2.5],
    }  # fmt: skip
    document = BenchDocument.from_dict({"schema": "torchship.bench/1", "results": [entry]})
    (result,) = document.results
    assert result.precision == "fp32" and result.format is None and result.threads is None
    assert result.p50_ms == 2.0 and result.samples_ms == [2.0, 2.5]
    assert document.fingerprint is None and document.machine == {} and document.software == {}
    with pytest.raises(ConfigError, match="bench result is missing sha256"):
        BenchResult.from_dict({k: v for k, v in entry.items() if k != "sha256"})
    with pytest.raises(ConfigError, match="bench document: 'results' must be a list"):
        BenchDocument.from_dict({"schema": "torchship.bench/1", "results": {}})


@pytest.mark.parametrize(
    ("content", "match"),
    [
        ('{"schema": "other/2", "results": []}', r"schema 'other/2' found, 'torchship.bench/1'"),
        ("not json", "not valid JSON"),
        ('{"schema": "torchship.bench/1", "results": [{"runtime": "torch"}]}',
         r"results\[0\] is missing artifact"),
    ],
)  # fmt: skip
def test_load_bench_document_validates(content, match, tmp_path):
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(ConfigError, match=match):
        load_bench_document(path)


def test_load_bench_document_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="missing.json: cannot read"):
        load_bench_document(tmp_path / "missing.json")


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"batches": ()}, "batches must be positive"),
        ({"batches": (0,)}, "batches must be positive"),
        ({"threads": 0}, "threads must be"),
        ({"iters": None, "min_time_s": None}, "give iters or min_time_s"),
    ],
)
def test_bench_config_validates(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        BenchConfig(**kwargs)


class _Scaled(torch.nn.Module):
    def forward(self, x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        return x * scale


def test_scalar_inputs_keep_their_shape_while_others_take_the_batch():
    specs = [
        InputSpec(name="x", dtype="float32", shape=(2, 4), dynamic={0: "batch"}),
        InputSpec(name="scale", dtype="float32", shape=()),
    ]
    eager = Artifact.eager(_Scaled(), inputs=specs, outputs=["y"])
    feeds = feeds_for_batch(eager, batch=3, seed=0)
    assert feeds["x"].shape == (3, 4) and feeds["scale"].shape == ()
    assert bench_runner("torch", eager, config=FAST, batch=3).batch == 3


def test_only_scalar_inputs_take_batch_one_only():
    scalar = InputSpec(name="scale", dtype="float32", shape=())
    eager = Artifact.eager(torch.nn.Identity(), inputs=[scalar], outputs=["y"])
    assert feeds_for_batch(eager, batch=1, seed=0)["scale"].shape == ()
    with pytest.raises(ConfigError, match=r"no input has a batch axis .*scale.*batch 2 cannot"):
        feeds_for_batch(eager, batch=2, seed=0)


def test_feeds_are_checked_once_not_in_every_timed_call(tiny_artifacts, monkeypatch):
    calls = []
    real = base.check_feeds
    monkeypatch.setattr(base, "check_feeds", lambda *a: calls.append(1) or real(*a))
    bench_runner("torch", tiny_artifacts[Format.EAGER], config=FAST, batch=2)
    assert len(calls) == 2  # the cold-start call and once before the timed loop


def test_gpu_results_carry_host_latency(tiny_artifacts, monkeypatch):
    # A GPU runner's timer: device time from the runner, host time of each call kept beside it.
    device = types.SimpleNamespace(last_compute_ms=0.5)
    monkeypatch.setattr(bench, "runner_timer", lambda runner: ComputeEventTimer(device))
    result = bench_runner("torch", tiny_artifacts[Format.EAGER], config=FAST, batch=4)
    data = result.to_dict()
    assert set(data) == RESULT_KEYS | {"host_latency_ms"}
    assert data["latency_ms"]["mean"] == 0.5 and data["throughput_per_s"] == 8000.0
    assert set(data["host_latency_ms"]) == set(data["latency_ms"])
    assert data["host_latency_ms"]["mean"] > 0
    assert BenchResult.from_dict(json.loads(json.dumps(data))) == result
