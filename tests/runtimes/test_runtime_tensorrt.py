"""The `tensorrt`, `torch-cuda`, `ort-cuda`/`ort-trt` GPU runners.

CPU-only checks run everywhere; the real ones are marked `tensorrt`/`gpu` and skipped by
tests/conftest.py without TensorRT or an NVIDIA GPU.
"""

from __future__ import annotations

import importlib.util
import json
import types
from dataclasses import replace

import numpy as np
import pytest

from torchship.artifact import Artifact, Format, Precision
from torchship.errors import BackendUnavailableError, ConfigError
from torchship.runtimes import BenchConfig, available_runners, bench_runner, get_runner
from torchship.runtimes.onnxruntime import OrtCudaRunner, OrtTensorrtRunner
from torchship.runtimes.tensorrt.builder import EngineOptions
from torchship.runtimes.tensorrt.runner import TensorRTRunner, profile_shapes
from torchship.runtimes.timing import HostTimer
from torchship.runtimes.torch_cuda import ComputeEventTimer, TorchCudaRunner

HAS_TRT = importlib.util.find_spec("tensorrt") is not None


@pytest.fixture
def engine_cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCHSHIP_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_registered_by_name():
    assert get_runner("tensorrt") is TensorRTRunner
    assert TensorRTRunner.formats == (Format.ONNX, Format.TENSORRT_ENGINE)
    assert get_runner("torch-cuda") is TorchCudaRunner and TorchCudaRunner.device == "cuda"


def test_profile_spans_dynamic_axes_only():
    low, opt, high = profile_shapes((2, 3, 32), {0: "batch", 2: "seq"})
    assert (low, opt, high) == ((1, 3, 1), (2, 3, 32), (32, 3, 128))


def test_refuses_torchscript(tiny_artifacts):
    with pytest.raises(ConfigError, match="runtime 'tensorrt' cannot run a torchscript"):
        TensorRTRunner(tiny_artifacts[Format.TORCHSCRIPT])


@pytest.mark.skipif(HAS_TRT, reason="tensorrt is installed here")
def test_missing_package_is_unavailable(tiny_artifacts):
    assert "tensorrt" not in available_runners()
    with pytest.raises(BackendUnavailableError, match="tensorrt package is not installed"):
        TensorRTRunner(tiny_artifacts[Format.ONNX]).load()


def test_compute_timer_reports_the_runner_device_time():
    runner = types.SimpleNamespace(last_compute_ms=0.25)
    timer = ComputeEventTimer(runner)
    assert timer.time_call(lambda: None) == 0.25
    assert timer.clock == "cuda-event" and len(timer.host_samples_ms) == 1
    assert timer.host_samples_ms[0] >= 0


def test_gpu_runners_exclude_copies_from_timing(tiny_artifacts):
    runner = OrtCudaRunner(tiny_artifacts[Format.ONNX])
    assert runner.timing_includes_copies is False
    if not _cuda():
        assert isinstance(runner.make_timer(), HostTimer)


def test_ort_trt_runs_on_our_stream_with_an_engine_cache(tiny_artifacts, engine_cache_dir):
    runner = OrtTensorrtRunner(tiny_artifacts[Format.ONNX])
    runner._stream = types.SimpleNamespace(cuda_stream=1234)  # what torch.cuda.Stream exposes
    (trt_name, trt_opts), (cuda_name, cuda_opts), cpu = runner.provider_list()
    assert (trt_name, cuda_name, cpu) == (
        "TensorrtExecutionProvider",
        "CUDAExecutionProvider",
        "CPUExecutionProvider",
    )
    assert trt_opts["user_compute_stream"] == cuda_opts["user_compute_stream"] == "1234"
    assert trt_opts["trt_engine_cache_path"] == str(engine_cache_dir / "ort-trt")


def test_ort_trt_creates_its_engine_cache_folder(tiny_artifacts, engine_cache_dir):
    # ORT creates trt_engine_cache_path without parents; a fresh ~/.cache must not break it.
    assert not engine_cache_dir.exists()
    runner = OrtTensorrtRunner(tiny_artifacts[Format.ONNX])
    runner._stream = types.SimpleNamespace(cuda_stream=1234)
    runner.provider_list()
    assert (engine_cache_dir / "ort-trt").is_dir()


@pytest.mark.parametrize("cls", [OrtCudaRunner, OrtTensorrtRunner])
def test_ort_gpu_needs_torch_cuda(cls, monkeypatch):
    # onnxruntime-gpu and a GPU, but CPU-only torch: the runner's streams/buffers need torch CUDA.
    import onnxruntime
    import torch

    monkeypatch.setattr(onnxruntime, "get_available_providers", lambda: list(cls.providers))
    monkeypatch.setattr("torchship.runtimes.onnxruntime.gpu_visible", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    reason = cls.unavailable_reason()
    assert reason is not None and "sees no CUDA GPU" in reason
    assert f"{cls.name} needs a CUDA build of torch" in reason


def test_broken_tensorrt_is_unavailable_with_the_import_error(monkeypatch):
    def broken():
        raise BackendUnavailableError(
            "tensorrt is installed but cannot be imported: libnvinfer.so.10: cannot open"
        )

    monkeypatch.setattr("torchship.runtimes.tensorrt.runner.import_tensorrt", broken)
    assert "cannot be imported: libnvinfer.so.10" in TensorRTRunner.unavailable_reason()


def test_ort_cpu_providers_unchanged(tiny_artifacts):
    runner = get_runner("ort-cpu")(tiny_artifacts[Format.ONNX])
    assert runner.provider_list() == ["CPUExecutionProvider"]


@pytest.mark.skipif(importlib.util.find_spec("torch") is None, reason="torch missing")
def test_torch_cuda_unavailable_without_a_gpu(tiny_artifacts):
    if _cuda():
        pytest.skip("a GPU is here")
    with pytest.raises(BackendUnavailableError, match="torch .* sees no CUDA GPU"):
        TorchCudaRunner(tiny_artifacts[Format.EAGER]).load()


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


# --- on a GPU ---------------------------------------------------------------------------------


def _x(batch: int) -> np.ndarray:
    return np.random.default_rng(batch).standard_normal((batch, 4)).astype(np.float32)


@pytest.mark.tensorrt
def test_matches_eager(tiny_artifacts, tiny_module, eager_output, engine_cache_dir):
    x = _x(5)
    with TensorRTRunner(tiny_artifacts[Format.ONNX]) as runner:
        (got,) = runner.infer({"x": x}).values()
        assert runner.last_compute_ms > 0
    np.testing.assert_allclose(got, eager_output(tiny_module, x), rtol=1e-3, atol=1e-4)
    with TensorRTRunner(tiny_artifacts[Format.ONNX]) as again:
        assert again.from_cache


@pytest.mark.tensorrt
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_engine_file_round_trip(tiny_artifacts, tmp_path, engine_cache_dir, precision):
    from torchship.exporter.engines import build_engine_file

    onnx = tiny_artifacts[Format.ONNX]
    result = build_engine_file(
        onnx.path, out=tmp_path, inputs=onnx.inputs, options=EngineOptions(precision=precision)
    )
    assert result.parity["passed"]
    engine = Artifact.open(result.artifact.path)
    assert engine.precision is Precision(precision)
    with get_runner("tensorrt")(engine) as runner:
        assert runner.infer({"x": _x(3)})["y"].shape == (3, 3)


@pytest.mark.tensorrt
def test_engine_from_another_tensorrt_is_refused(tiny_artifacts, tmp_path, engine_cache_dir):
    from torchship.exporter.engines import build_engine_file

    onnx = tiny_artifacts[Format.ONNX]
    result = build_engine_file(onnx.path, out=tmp_path, inputs=onnx.inputs, parity=False)
    manifest = json.loads(result.manifest_path.read_text())
    manifest["artifacts"][0]["details"]["tensorrt"]["tensorrt_version"] = "7.0.0"
    result.manifest_path.write_text(json.dumps(manifest))
    with pytest.raises(BackendUnavailableError, match=r"built for TensorRT 7.0.0"):
        TensorRTRunner(Artifact.open(result.artifact.path)).load()


@pytest.mark.tensorrt
def test_shape_outside_the_profile_is_a_config_error(tiny_artifacts, engine_cache_dir):
    with TensorRTRunner(tiny_artifacts[Format.ONNX]) as runner:
        with pytest.raises(ConfigError, match="outside the engine's profile"):
            runner.infer({"x": _x(100)})


@pytest.mark.tensorrt
def test_bench_reports_device_time(tiny_artifacts, engine_cache_dir):
    config = BenchConfig(warmup=2, iters=5, min_time_s=None)
    result = bench_runner("tensorrt", tiny_artifacts[Format.ONNX], config=config, batch=4)
    assert result.timing == {"clock": "cuda-event", "includes_copies": False}
    assert result.latency_ms["p50"] > 0


@pytest.mark.gpu
@pytest.mark.parametrize("precision", [Precision.FP32, Precision.FP16])
def test_torch_cuda_matches_eager(tiny_artifacts, tiny_module, eager_output, precision):
    eager = replace(tiny_artifacts[Format.EAGER], precision=precision)
    x = _x(4)
    with TorchCudaRunner(eager) as runner:
        got = runner.infer({"x": x})["y"]
        assert runner.last_compute_ms > 0
    tolerance = 1e-5 if precision is Precision.FP32 else 1e-2
    np.testing.assert_allclose(got, eager_output(tiny_module, x), atol=tolerance, rtol=tolerance)
    assert next(tiny_module.parameters()).device.type == "cpu"  # the caller's module is untouched


@pytest.mark.gpu
@pytest.mark.parametrize("name", ["ort-cuda", "ort-trt"])
def test_ort_gpu_io_binding_matches_eager(
    name, tiny_artifacts, tiny_module, eager_output, engine_cache_dir
):
    cls = get_runner(name)
    if cls.unavailable_reason() is not None:
        pytest.skip(cls.unavailable_reason())
    x = _x(3)
    with cls(tiny_artifacts[Format.ONNX]) as runner:
        got = runner.infer({"x": x})["y"]
        assert runner.last_compute_ms > 0
    np.testing.assert_allclose(got, eager_output(tiny_module, x), rtol=1e-3, atol=1e-4)
