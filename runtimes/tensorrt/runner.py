"""`tensorrt`: a native TensorRT engine, from an `.engine` file or built from ONNX on load.

`tensorrt` (and CUDA tensors through torch) are imported only when a runner loads. I/O goes
through torch CUDA tensors bound by name (`set_tensor_address`) and `execute_async_v3` on the
runner's own CUDA stream: the name-based API exists from TensorRT 8.5, so 8.6 (Jetson) and 10.x
share one path, and the binding-index API that 10.0 removed is never used.

An `.engine` file is checked against its manifest (TensorRT version, GPU) before TensorRT sees
it; an ONNX artifact is built for its own precision through the engine cache.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import numpy as np

from torchship.artifact import Artifact, Format
from torchship.errors import BackendUnavailableError, ConfigError, ExportError, ModelLoadError
from torchship.runtimes.base import RUNNERS, Runner
from torchship.runtimes.tensorrt.builder import EngineOptions, profile_shapes
from torchship.runtimes.tensorrt.cache import (
    EngineCache,
    EngineInfo,
    build_engine,
    check_compatible,
    gpu_identity,
    read_engine_info,
)
from torchship.runtimes.tensorrt.compat import import_tensorrt, routed_logger
from torchship.runtimes.torch_cuda import ComputeEvents, GpuTimedMixin, cuda_reason, torch_dtype

__all__ = ["TensorRTRunner", "profile_shapes"]

log = logging.getLogger(__name__)


@RUNNERS.register("tensorrt")
class TensorRTRunner(GpuTimedMixin, Runner):
    """Runs a TensorRT engine; `options`/`cache` apply when the artifact is ONNX."""

    name = "tensorrt"
    formats = (Format.ONNX, Format.TENSORRT_ENGINE)
    device = "cuda"
    extra = "tensorrt"

    def __init__(
        self,
        artifact: Artifact,
        *,
        threads: int | None = None,
        options: EngineOptions | None = None,
        cache: EngineCache | None = None,
    ) -> None:
        super().__init__(artifact, threads=threads)
        self.options = options
        self.cache = cache
        self.info: EngineInfo | None = None
        #: True when the engine for an ONNX artifact came from the engine cache.
        self.from_cache = False

    @classmethod
    def unavailable_reason(cls) -> str | None:
        # The real import and version check: a broken or too-old TensorRT is not available.
        try:
            import_tensorrt()
        except BackendUnavailableError as exc:
            return str(exc)
        return cuda_reason()

    def _load(self) -> None:
        import torch

        trt, caps = import_tensorrt()
        plan = self._plan(caps.version)
        logger = routed_logger(trt, name=__name__)
        engine = trt.Runtime(logger).deserialize_cuda_engine(plan)
        if engine is None:
            detail = "; ".join(logger.errors[-2:]) or "no message"
            raise BackendUnavailableError(
                f"{self.artifact.path}: TensorRT {caps.version} cannot load this engine "
                f"({detail}); rebuild it on this machine with `torchship build-engine`"
            )
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        is_input = {n: engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT for n in names}
        self._inputs = [n for n in names if is_input[n]]
        self._outputs = [n for n in names if not is_input[n]]
        self._dtypes = {n: np.dtype(trt.nptype(engine.get_tensor_dtype(n))) for n in names}
        self._check_input_names()
        self._engine = engine
        self._context = engine.create_execution_context()
        self._stream = torch.cuda.Stream()
        log.info("tensorrt: loaded %s (%s)", self.artifact.path.name, self.artifact.precision.value)

    def _plan(self, trt_version: str) -> bytes:
        if self.artifact.format is Format.ONNX:
            build = build_engine(self.artifact, options=self.options, cache=self.cache)
            self.info, self.from_cache = build.info, build.cached
            return build.plan
        self.info = read_engine_info(self.artifact)
        if self.info is None:
            log.warning(
                "%s has no manifest entry: cannot check its GPU/TensorRT version before loading",
                self.artifact.path,
            )
        else:
            check_compatible(
                self.info, path=self.artifact.path, trt_version=trt_version, gpu=gpu_identity()
            )
        return self.artifact.path.read_bytes()

    def _check_input_names(self) -> None:
        want = {s.name for s in self.inputs}
        if want != set(self._inputs):
            raise ModelLoadError(
                f"{self.artifact.path}: the engine takes inputs {sorted(self._inputs)}, "
                f"the artifact describes {sorted(want)}"
            )

    def _infer(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        import torch

        events = ComputeEvents(self._stream)
        with torch.cuda.stream(self._stream):
            held = [self._bind_input(name, feeds[name]) for name in self._inputs]
            outputs = {name: self._bind_output(name) for name in self._outputs}
            with events.around():
                ok = self._context.execute_async_v3(self._stream.cuda_stream)
            if not ok:
                raise ExportError(f"{self.artifact.path}: TensorRT execution failed (see its log)")
            arrays = {name: tensor.cpu().numpy() for name, tensor in outputs.items()}
        self.last_compute_ms = events.elapsed_ms()
        del held  # the input buffers had to outlive the enqueued work
        return arrays

    def _bind_input(self, name: str, value: np.ndarray) -> Any:
        import torch

        # 8.6 turns int64 ONNX inputs into int32 engine inputs: feed what the engine takes.
        array = np.ascontiguousarray(value, dtype=self._dtypes[name])
        tensor = torch.from_numpy(array).to("cuda", non_blocking=True)
        if not self._context.set_input_shape(name, tuple(tensor.shape)):
            low, _, high = self._engine.get_tensor_profile_shape(name, 0)
            raise ConfigError(
                f"input {name!r}: shape {list(tensor.shape)} is outside the engine's profile "
                f"(min {list(low)}, max {list(high)}); rebuild with wider --min/--max shapes"
            )
        self._context.set_tensor_address(name, tensor.data_ptr())
        return tensor

    def _bind_output(self, name: str) -> Any:
        import torch

        shape = tuple(int(d) for d in self._context.get_tensor_shape(name))
        if any(d < 0 for d in shape):
            raise ExportError(
                f"{self.artifact.path}: output {name!r} has a data-dependent shape {list(shape)}, "
                "which the tensorrt runner does not support"
            )
        tensor = torch.empty(shape, dtype=torch_dtype(self._dtypes[name]), device="cuda")
        self._context.set_tensor_address(name, tensor.data_ptr())
        return tensor

    def _close(self) -> None:
        self._context = None
        self._engine = None
        self._stream = None
