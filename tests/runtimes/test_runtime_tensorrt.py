from __future__ import annotations

import importlib.util

import pytest

from torchship.artifact import Format
from torchship.errors import BackendUnavailableError, ConfigError
from torchship.runtimes import available_runners, get_runner
from torchship.runtimes.tensorrt import TensorRTRunner, profile_shapes

HAS_TRT = importlib.util.find_spec("tensorrt") is not None


def test_registered_by_name():
    assert get_runner("tensorrt") is TensorRTRunner
    assert TensorRTRunner.formats == (Format.ONNX,) and TensorRTRunner.device == "cuda"


def test_profile_spans_dynamic_axes_only():
    low, opt, high = profile_shapes((2, 3, 32), {0: "batch", 2: "seq"})
    assert (low, opt, high) == ((1, 3, 1), (2, 3, 32), (8, 3, 128))


def test_refuses_torchscript(tiny_artifacts):
    with pytest.raises(ConfigError, match="runtime 'tensorrt' cannot run a torchscript"):
        TensorRTRunner(tiny_artifacts[Format.TORCHSCRIPT])


@pytest.mark.skipif(HAS_TRT, reason="tensorrt is installed here")
def test_missing_package_is_unavailable(tiny_artifacts):
    assert "tensorrt" not in available_runners()
    with pytest.raises(BackendUnavailableError, match="tensorrt package is not installed"):
        TensorRTRunner(tiny_artifacts[Format.ONNX]).load()


@pytest.mark.tensorrt
def test_matches_eager(tiny_artifacts, tiny_module, eager_output):
    import numpy as np

    x = np.random.default_rng(0).standard_normal((5, 4)).astype(np.float32)
    with TensorRTRunner(tiny_artifacts[Format.ONNX]) as runner:
        (got,) = runner.infer({"x": x}).values()
    np.testing.assert_allclose(got, eager_output(tiny_module, x), rtol=1e-3, atol=1e-4)
