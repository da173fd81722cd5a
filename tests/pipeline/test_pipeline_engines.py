"""The engines step: nothing without TensorRT; with it, one engine per precision, by role."""

from __future__ import annotations

import importlib.util
from dataclasses import replace
from types import SimpleNamespace

import pytest

import torchship.pipeline.steps.engines
from torchship.artifact import Precision
from torchship.errors import ConfigError
from torchship.pipeline.steps import EnginesStep
from torchship.runtimes.tensorrt.runner import TensorRTRunner


@pytest.mark.skipif(importlib.util.find_spec("tensorrt") is not None, reason="tensorrt is here")
def test_engines_step_adds_nothing_without_tensorrt(staged_state, demo_onnx):
    state = staged_state(artifacts={"fp32/onnx": demo_onnx})
    assert EnginesStep()(state).artifacts == {}
    assert list(state.artifacts) == ["fp32/onnx"]
    assert not (state.stage / "engines").exists()


def test_engines_build_from_their_source_roles(staged_state, demo_onnx, monkeypatch):
    built = []

    def build(path, *, out, inputs, options):
        built.append((path, out, options.precision))
        return SimpleNamespace(artifact=demo_onnx)

    monkeypatch.setattr(TensorRTRunner, "unavailable_reason", classmethod(lambda cls: None))
    monkeypatch.setattr(torchship.pipeline.steps.engines, "step_function", lambda name: build)
    int8 = demo_onnx.path.with_name("qdq.onnx")
    qdq = replace(demo_onnx, path=int8)
    state = staged_state(artifacts={"fp32/onnx": demo_onnx, "int8-tensorrt/onnx": qdq})
    step = EnginesStep(precisions=(Precision.FP16,), int8_source="int8-tensorrt/onnx")
    result = step(state)
    assert list(result.artifacts) == ["fp16/tensorrt-engine", "int8/tensorrt-engine"]
    engines = state.stage / "engines"
    assert built == [(demo_onnx.path, engines, Precision.FP16), (int8, engines, Precision.INT8)]


def test_an_int8_engine_needs_the_tensorrt_preset(staged_state, demo_onnx):
    state = staged_state(artifacts={"fp32/onnx": demo_onnx})
    step = EnginesStep(int8_source="int8-tensorrt/onnx")
    with pytest.raises(ConfigError, match='presets = \\["tensorrt"\\]; add it'):
        step(state)
