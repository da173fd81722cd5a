"""`tensorrt`: a native TensorRT engine built from an ONNX artifact when the runner loads.

`tensorrt` (and CUDA tensors through torch) are imported only here, only when used. INT8 means
explicit Q/DQ ONNX built as a strongly typed network: TensorRT 10 deprecated implicit
calibration and later releases removed it.
"""

from __future__ import annotations

import importlib.util
import logging
from collections.abc import Mapping
from typing import Any

import numpy as np

from torchship.artifact import Format, Precision
from torchship.errors import ExportError
from torchship.runtimes.base import RUNNERS, Runner
from torchship.runtimes.timing import Timer, timer_for

__all__ = ["TensorRTRunner", "profile_shapes"]

log = logging.getLogger(__name__)

#: Dynamic axes are built for sizes 1 .. this many times the example size.
DYNAMIC_MAX_FACTOR = 4


@RUNNERS.register("tensorrt")
class TensorRTRunner(Runner):
    """Builds the engine at load (FP16 flag for fp16 artifacts, strongly typed for int8)."""

    name = "tensorrt"
    formats = (Format.ONNX,)
    device = "cuda"
    extra = "tensorrt"

    @classmethod
    def unavailable_reason(cls) -> str | None:
        if importlib.util.find_spec("tensorrt") is None:
            return "the tensorrt package is not installed (pip install torchship[tensorrt])"
        import torch

        if not torch.cuda.is_available():
            return "torch sees no CUDA GPU (TensorRT buffers are CUDA tensors)"
        return None

    def make_timer(self) -> Timer:
        """CUDA events on the current stream, which is where `_infer` enqueues its work."""
        return timer_for(self.device)

    def _load(self) -> None:
        import tensorrt as trt

        logger = trt.Logger(trt.Logger.WARNING)
        engine = trt.Runtime(logger).deserialize_cuda_engine(self._build(trt, logger))
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        self._outputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        self._engine = engine
        self._context = engine.create_execution_context()
        log.info("tensorrt: built %s (%s)", self.artifact.path.name, self.artifact.precision.value)

    def _build(self, trt: Any, logger: Any) -> bytes:
        builder = trt.Builder(logger)
        typed = self.artifact.precision is Precision.INT8
        flags = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED) if typed else 0
        network = builder.create_network(flags)
        parser = trt.OnnxParser(network, logger)
        if not parser.parse_from_file(str(self.artifact.path)):
            errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
            raise ExportError(f"{self.artifact.path}: TensorRT cannot parse it ({errors})")
        config = builder.create_builder_config()
        if self.artifact.precision is Precision.FP16:
            config.set_flag(trt.BuilderFlag.FP16)
        profile = builder.create_optimization_profile()
        for spec in self.inputs:
            profile.set_shape(spec.name, *profile_shapes(spec.shape, spec.dynamic))
        config.add_optimization_profile(profile)
        serialized = builder.build_serialized_network(network, config)
        if serialized is None:
            raise ExportError(f"{self.artifact.path}: TensorRT engine build failed (see its log)")
        return bytes(serialized)

    def _infer(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        import torch

        stream = torch.cuda.current_stream()
        inputs = {}  # keep device buffers alive until the stream is done with them
        for spec in self.inputs:
            tensor = torch.from_numpy(np.ascontiguousarray(feeds[spec.name])).cuda()
            self._context.set_input_shape(spec.name, tuple(tensor.shape))
            self._context.set_tensor_address(spec.name, tensor.data_ptr())
            inputs[spec.name] = tensor
        outputs = {name: self._empty_output(name) for name in self._outputs}
        for name, tensor in outputs.items():
            self._context.set_tensor_address(name, tensor.data_ptr())
        if not self._context.execute_async_v3(stream.cuda_stream):
            raise ExportError(f"{self.artifact.path}: TensorRT execution failed")
        return {name: tensor.cpu().numpy() for name, tensor in outputs.items()}

    def _empty_output(self, name: str) -> Any:
        import tensorrt as trt
        import torch

        np_dtype = np.dtype(trt.nptype(self._engine.get_tensor_dtype(name)))
        dtype = torch.from_numpy(np.empty(0, dtype=np_dtype)).dtype
        return torch.empty(tuple(self._context.get_tensor_shape(name)), dtype=dtype, device="cuda")

    def _close(self) -> None:
        self._context = None
        self._engine = None


def profile_shapes(
    shape: tuple[int, ...], dynamic: Mapping[int, str]
) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]:
    """(min, opt, max) for an optimization profile: dynamic axes span 1 .. 4x the example."""
    low = tuple(1 if i in dynamic else d for i, d in enumerate(shape))
    high = tuple(max(d, 1) * DYNAMIC_MAX_FACTOR if i in dynamic else d for i, d in enumerate(shape))
    return low, tuple(shape), high
