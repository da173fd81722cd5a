"""A fake `tensorrt` module and small ONNX models for the TensorRT builder tests.

The fake records what the builder is asked to do (network flags, builder flags, profiles,
workspace, timing cache, calibrator), per TensorRT release (8.6, 10.x, 11 without implicit
calibrators or weak typing), so the builder is checked in CI without TensorRT or a GPU.
"""

from __future__ import annotations

import enum
import importlib.machinery
import json
import sys
import types
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from torchship.artifact import Artifact, Format
from torchship.runtimes.tensorrt import cache as tensorrt_engine
from torchship.runtimes.tensorrt.cache import GpuIdentity
from torchship.specs import InputSpec

#: The GPU the fake reports (the tests compare against the same values).
FAKE_GPU = GpuIdentity("NVIDIA Fake 4090", "8.9")
SPEC = InputSpec(name="x", dtype="float32", shape=(2, 4), dynamic={0: "batch"})


# --- the fake tensorrt module -----------------------------------------------------------------


class Severity(enum.IntEnum):
    INTERNAL_ERROR = 0
    ERROR = 1
    WARNING = 2
    INFO = 3
    VERBOSE = 4


class FakeParserError:
    def __init__(self, desc, node, name="", op=""):
        self._desc, self._node, self._name, self._op = desc, node, name, op

    def desc(self):
        return self._desc

    def node(self):
        return self._node

    def code(self):
        return 8


class FakeParserError10(FakeParserError):
    """TensorRT 10 errors also carry the node's name and operator."""

    def node_name(self):
        return self._name

    def node_operator(self):
        return self._op


def make_fake_trt(version: str) -> types.ModuleType:
    major = int(version.split(".")[0])
    trt = types.ModuleType("tensorrt")
    trt.__spec__ = importlib.machinery.ModuleSpec("tensorrt", None)
    trt.__version__ = version
    trt.state = types.SimpleNamespace(builds=0, parse_errors=[], fail_build=False, configs=[])
    creation = {"EXPLICIT_BATCH": 0} if major < 11 else {}
    if major >= 9:
        creation["STRONGLY_TYPED"] = 1
    trt.NetworkDefinitionCreationFlag = enum.IntEnum("NetworkDefinitionCreationFlag", creation)
    flags = {"FP16": 0, "INT8": 1, "TF32": 6} if major < 11 else {"TF32": 6}
    trt.BuilderFlag = enum.IntEnum("BuilderFlag", flags)
    trt.MemoryPoolType = enum.IntEnum("MemoryPoolType", {"WORKSPACE": 0})
    trt.HardwareCompatibilityLevel = enum.IntEnum(
        "HardwareCompatibilityLevel", {"NONE": 0, "AMPERE_PLUS": 1}
    )
    trt.ILogger = type("ILogger", (), {"Severity": Severity, "__init__": lambda self: None})
    trt.IExecutionContext = type("IExecutionContext", (), {"execute_async_v3": lambda s, h: 1})
    if major < 11:
        for name in ("IInt8EntropyCalibrator2", "IInt8MinMaxCalibrator"):
            setattr(trt, name, type(name, (), {"__init__": lambda self: None}))
    error_cls = FakeParserError10 if major >= 10 else FakeParserError
    trt.make_error = error_cls
    types_ = {"FLOAT": 0, "HALF": 1, "INT8": 2, "INT32": 3, "BOOL": 4, "UINT8": 5}
    if major >= 10:
        types_["INT64"] = 8  # 8.6 has no INT64: its parser turns int64 inputs into int32
    trt.DataType = enum.IntEnum("DataType", types_)
    trt.nptype = lambda dtype: _NPTYPES[trt.DataType(dtype).name]
    trt.Builder = lambda logger: FakeBuilder(trt, logger)
    trt.OnnxParser = lambda network, logger: FakeParser(trt, network)
    return trt


_NPTYPES = {
    "FLOAT": np.float32, "HALF": np.float16, "INT8": np.int8, "INT32": np.int32,
    "BOOL": np.bool_, "UINT8": np.uint8, "INT64": np.int64,
}  # fmt: skip
_ONNX_TO_TRT = {
    TensorProto.FLOAT: "FLOAT", TensorProto.FLOAT16: "HALF", TensorProto.INT8: "INT8",
    TensorProto.INT32: "INT32", TensorProto.BOOL: "BOOL", TensorProto.UINT8: "UINT8",
    TensorProto.INT64: "INT64",
}  # fmt: skip


class FakeTensor:
    def __init__(self, name, shape, dtype=None):
        self.name, self.shape, self.dtype = name, shape, dtype


class FakeNetwork:
    def __init__(self, flags):
        self.flags = flags
        self.inputs: list[FakeTensor] = []

    @property
    def num_inputs(self):
        return len(self.inputs)

    def get_input(self, i):
        return self.inputs[i]


class FakeParser:
    def __init__(self, trt, network):
        self.trt, self.network = trt, network

    def parse_from_file(self, path):
        if self.trt.state.parse_errors:
            return False
        graph = onnx.load(path).graph
        for value in graph.input:
            dims = [d.dim_value if d.HasField("dim_value") else -1 for d in _dims(value)]
            dtype = _ONNX_TO_TRT[value.type.tensor_type.elem_type]
            if not hasattr(self.trt.DataType, dtype):
                dtype = "INT32"  # what the 8.6 parser does with int64
            self.network.inputs.append(
                FakeTensor(value.name, tuple(dims), getattr(self.trt.DataType, dtype))
            )
        return True

    @property
    def num_errors(self):
        return len(self.trt.state.parse_errors)

    def get_error(self, i):
        return self.trt.state.parse_errors[i]


def _dims(value):
    return value.type.tensor_type.shape.dim


class FakeProfile:
    def __init__(self):
        self.shapes = {}

    def set_shape(self, name, low, opt, high):
        self.shapes[name] = (tuple(low), tuple(opt), tuple(high))


class FakeTimingCache:
    def __init__(self, data):
        self.data = bytes(data)

    def serialize(self):
        return self.data


class FakeConfig:
    def __init__(self, trt):
        self.trt = trt
        self.flags = {trt.BuilderFlag.TF32}  # TensorRT enables TF32 by default
        self.pools, self.profiles = {}, []
        self.timing_cache_seen: list[bytes] = []
        self.int8_calibrator = None
        self.calibration_profile = None
        self.hardware_compatibility_level = trt.HardwareCompatibilityLevel.NONE

    def set_flag(self, flag):
        self.flags.add(flag)

    def clear_flag(self, flag):
        self.flags.discard(flag)

    def set_memory_pool_limit(self, pool, size):
        self.pools[pool] = size

    def add_optimization_profile(self, profile):
        self.profiles.append(profile)

    def set_calibration_profile(self, profile):
        self.calibration_profile = profile

    def create_timing_cache(self, data):
        self.timing_cache_seen.append(bytes(data))
        return FakeTimingCache(data)

    def set_timing_cache(self, cache, ignore_mismatch):
        self.timing_cache = cache
        return cache.data != b"mismatch" or ignore_mismatch

    def get_timing_cache(self):
        return self.timing_cache


class FakeBuilder:
    def __init__(self, trt, logger):
        self.trt, self.logger = trt, logger

    def create_network(self, flags):
        self.network = FakeNetwork(flags)
        return self.network

    def create_builder_config(self):
        config = FakeConfig(self.trt)
        self.trt.state.configs.append(config)
        return config

    def create_optimization_profile(self):
        return FakeProfile()

    def build_serialized_network(self, network, config):
        self.trt.state.builds += 1
        self.trt.state.network = network
        self.logger.log(Severity.WARNING, "fake builder warning")
        if self.trt.state.fail_build:
            self.logger.log(Severity.ERROR, "out of device memory in tactic 7")
            return None
        if config.int8_calibrator is not None:
            _calibrate(config.int8_calibrator, network)
        config.timing_cache.data += b"+tactics"
        return json.dumps({"flags": sorted(int(f) for f in config.flags)}).encode()


def _calibrate(calibrator, network):
    if calibrator.read_calibration_cache() is not None:
        return
    names = [t.name for t in network.inputs]
    while calibrator.get_batch(names) is not None:
        pass
    calibrator.write_calibration_cache(b"calibration-table")


class FakeDeviceArray:
    def __init__(self, array):
        self.array = array

    def data_ptr(self):
        return id(self.array)


# --- fixtures ---------------------------------------------------------------------------------


@pytest.fixture
def make_trt():
    """The fake module factory, without installing it: make_trt("8.6.1")."""
    return make_fake_trt


@pytest.fixture
def fake_trt(monkeypatch, tmp_path):
    """Install a fake `tensorrt` (10.3 unless re-made) with a fake GPU and a private cache."""

    def install(version: str = "10.3.0") -> types.ModuleType:
        trt = make_fake_trt(version)
        monkeypatch.setitem(sys.modules, "tensorrt", trt)
        return trt

    monkeypatch.setenv("TORCHSHIP_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(tensorrt_engine, "gpu_identity", lambda: FAKE_GPU)
    monkeypatch.setattr("torchship.runtimes.tensorrt.runner.gpu_identity", lambda: FAKE_GPU)
    monkeypatch.setattr(
        "torchship.runtimes.tensorrt.calibrator._cuda_upload", lambda array: FakeDeviceArray(array)
    )
    return install


def _write(model: onnx.ModelProto, path: Path) -> Artifact:
    onnx.save(model, str(path))
    return Artifact.create(path, format=Format.ONNX, inputs=[SPEC], outputs=["y"])


def _io():
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])
    return x, y


@pytest.fixture
def fp32_onnx(tmp_path) -> Artifact:
    x, y = _io()
    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"], name="relu_0")], "g", [x], [y]
    )
    return _write(helper.make_model(graph), tmp_path / "fp32.onnx")


@pytest.fixture
def qdq_onnx(tmp_path) -> Artifact:
    x, y = _io()
    inits = [
        helper.make_tensor("s", TensorProto.FLOAT, [], [0.1]),
        helper.make_tensor("z", TensorProto.INT8, [], [0]),
    ]
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "s", "z"], ["q"], name="q_0"),
        helper.make_node("DequantizeLinear", ["q", "s", "z"], ["y"], name="dq_0"),
    ]
    graph = helper.make_graph(nodes, "g", [x], [y], initializer=inits)
    return _write(helper.make_model(graph), tmp_path / "qdq.onnx")


@pytest.fixture
def fp16_onnx(tmp_path) -> Artifact:
    x, y = _io()
    nodes = [
        helper.make_node("Cast", ["x"], ["h"], to=TensorProto.FLOAT16, name="cast_in"),
        helper.make_node("Add", ["h", "b"], ["a"], name="add_0"),
        helper.make_node("Cast", ["a"], ["y"], to=TensorProto.FLOAT, name="cast_out"),
    ]
    bias = helper.make_tensor("b", TensorProto.FLOAT16, [4], np.ones(4, np.float16).tolist())
    graph = helper.make_graph(nodes, "g", [x], [y], initializer=[bias])
    return _write(helper.make_model(graph), tmp_path / "fp16.onnx")


@pytest.fixture
def calib_npz(tmp_path) -> Path:
    path = tmp_path / "calib.npz"
    np.savez(path, x=np.random.default_rng(0).standard_normal((20, 4)).astype(np.float32))
    return path
