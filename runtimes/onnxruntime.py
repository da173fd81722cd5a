"""ONNX Runtime runtimes: `ort-cpu`, `ort-cuda`, `ort-trt` (one class, different providers).

onnxruntime is imported inside methods so `import torchship.runtimes` stays cheap.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from torchship.artifact import Artifact, Format
from torchship.errors import BackendUnavailableError, ModelLoadError, first_line
from torchship.runtimes.base import RUNNERS, Runner
from torchship.runtimes.tensorrt.cache import cache_root
from torchship.runtimes.torch_cuda import ComputeEvents, GpuTimedMixin, cuda_reason

__all__ = ["OrtRunner", "OrtCpuRunner", "OrtGpuRunner", "OrtCudaRunner", "OrtTensorrtRunner"]

log = logging.getLogger(__name__)

#: ONNX Runtime's input type names -> torchship dtype names (others are not checked).
_ORT_DTYPES = {
    "tensor(float)": "float32",
    "tensor(float16)": "float16",
    "tensor(double)": "float64",
    "tensor(int64)": "int64",
    "tensor(int32)": "int32",
    "tensor(int8)": "int8",
    "tensor(uint8)": "uint8",
    "tensor(bool)": "bool",
}


class OrtRunner(Runner):
    """An onnxruntime.InferenceSession over `providers` (in priority order).

    `spinning` controls `session.intra_op.allow_spinning`. It is off by default: the spinning
    intra-op pools of two sessions timed alternately in one process disturb each other and
    distort A/B latency ratios (docs/design.md). Turn it on only for single-session peak numbers.
    """

    formats = (Format.ONNX,)
    providers: ClassVar[tuple[str, ...]]
    install_hint: ClassVar[str] = "pip install onnxruntime"

    def __init__(
        self, artifact: Artifact, *, threads: int | None = None, spinning: bool = False
    ) -> None:
        super().__init__(artifact, threads=threads)
        self.spinning = spinning
        self._session: Any = None

    @classmethod
    def unavailable_reason(cls) -> str | None:
        try:
            import onnxruntime
        except ImportError:
            return f"onnxruntime is not installed ({cls.install_hint})"
        have = onnxruntime.get_available_providers()
        primary = cls.providers[0]
        if primary not in have:
            return (
                f"onnxruntime {onnxruntime.__version__} has no {primary} "
                f"(providers: {', '.join(have)}); {cls.install_hint}{_gpu_note(cls.device)}"
            )
        if cls.device == "cuda" and not gpu_visible():
            return f"{primary} is installed but no NVIDIA GPU is visible"
        return None

    def session_options(self) -> Any:
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.log_severity_level = 3  # errors only: ORT's warnings are not one line for a user
        if self.threads is not None:
            options.intra_op_num_threads = self.threads
        options.add_session_config_entry(
            "session.intra_op.allow_spinning", "1" if self.spinning else "0"
        )
        return options

    def provider_list(self) -> list:
        """Providers as InferenceSession takes them: names, or (name, options) pairs."""
        return list(self.providers)

    def _load(self) -> None:
        import onnxruntime

        path = self.artifact.path
        if not Path(path).is_file():
            raise ModelLoadError(f"{path}: no such ONNX file")
        options = self.session_options()
        try:
            session = onnxruntime.InferenceSession(
                str(path), sess_options=options, providers=self.provider_list()
            )
        except Exception as exc:  # ORT raises its own pybind error types
            raise ModelLoadError(f"{path}: onnxruntime cannot load it ({first_line(exc)})") from exc
        self._check_providers(session)
        self._check_input_names(session)
        self._check_input_types(session)
        log.info(
            "%s: loaded %s with providers %s, graph optimization %s, threads %s, spinning %s",
            self.name,
            path.name,
            session.get_providers(),
            options.graph_optimization_level.name,
            self.threads or "default",
            self.spinning,
        )
        self._session = session
        self._output_names = [o.name for o in session.get_outputs()]

    def _check_providers(self, session: Any) -> None:
        # ORT silently falls back to CPU when a GPU provider fails to initialise.
        active = session.get_providers()
        if self.providers[0] not in active:
            raise BackendUnavailableError(
                f"runtime {self.name!r}: {self.providers[0]} failed to initialise for "
                f"{self.artifact.path.name}; onnxruntime fell back to {', '.join(active)}"
            )

    def _check_input_names(self, session: Any) -> None:
        have = {i.name for i in session.get_inputs()}
        want = {s.name for s in self.inputs}
        if want != have:
            raise ModelLoadError(
                f"{self.artifact.path}: the ONNX graph takes inputs {sorted(have)}, "
                f"the artifact describes {sorted(want)}"
            )

    def _check_input_types(self, session: Any) -> None:
        """ModelLoadError naming the input whose described dtype or rank the graph does not take."""
        graph = {i.name: i for i in session.get_inputs()}
        for spec in self.inputs:
            node = graph[spec.name]
            dtype = _ORT_DTYPES.get(node.type)
            if dtype is not None and dtype != spec.dtype:
                raise ModelLoadError(
                    f"{self.artifact.path}: input {spec.name!r} is {dtype} in the ONNX graph, "
                    f"the artifact describes {spec.dtype} (--input {spec.name}:SHAPE:{dtype} fits)"
                )
            shape = node.shape
            if shape is not None and len(shape) != len(spec.shape):
                raise ModelLoadError(
                    f"{self.artifact.path}: input {spec.name!r} is {len(shape)}-d {list(shape)} "
                    f"in the ONNX graph, the artifact describes {len(spec.shape)}-d "
                    f"{list(spec.shape)}"
                )

    def _infer(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        ort_feeds = {s.name: np.ascontiguousarray(feeds[s.name]) for s in self.inputs}
        arrays = self._session.run(self._output_names, ort_feeds)
        return dict(zip(self._output_names, arrays, strict=True))

    def _close(self) -> None:
        # Drop the session so its thread pool does not disturb the next measured session.
        self._session = None


@RUNNERS.register("ort-cpu")
class OrtCpuRunner(OrtRunner):
    name = "ort-cpu"
    providers = ("CPUExecutionProvider",)


class OrtGpuRunner(GpuTimedMixin, OrtRunner):
    """ORT on a GPU: inputs bound on the device (I/O binding), compute on our CUDA stream.

    The session runs on the runner's torch stream (`user_compute_stream`), so CUDA events on
    that stream time ORT's kernels alone; host<->device copies stay outside the events.
    """

    @classmethod
    def unavailable_reason(cls) -> str | None:
        reason = super().unavailable_reason()
        if reason is not None:
            return reason
        # Streams, events and the device input buffers all come from torch.
        torch_reason = cuda_reason()
        if torch_reason is not None:
            return f"{torch_reason}; {cls.name} needs a CUDA build of torch"
        return None

    def _load(self) -> None:
        import torch

        self._stream = torch.cuda.Stream()
        super()._load()

    def provider_list(self) -> list:
        stream = str(self._stream.cuda_stream)
        engines = cache_root() / "ort-trt"
        if "TensorrtExecutionProvider" in self.providers:
            # ORT creates this folder without its parents and fails when they are missing.
            engines.mkdir(parents=True, exist_ok=True)
        options = {
            "CUDAExecutionProvider": {"user_compute_stream": stream},
            "TensorrtExecutionProvider": {
                "user_compute_stream": stream,
                # ORT rebuilds TensorRT engines per session unless they are cached.
                "trt_engine_cache_enable": "True",
                "trt_engine_cache_path": str(engines),
                "trt_timing_cache_enable": "True",
                "trt_timing_cache_path": str(engines),
            },
        }
        return [(p, options[p]) if p in options else p for p in self.providers]

    def _infer(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        import torch

        events = ComputeEvents(self._stream)
        binding = self._session.io_binding()
        with torch.cuda.stream(self._stream):
            held = [self._bind_input(binding, s.name, feeds[s.name]) for s in self.inputs]
            for name in self._output_names:
                binding.bind_output(name, "cuda", torch.cuda.current_device())
            with events.around():
                self._session.run_with_iobinding(binding)
        self.last_compute_ms = events.elapsed_ms()
        del held  # device inputs had to outlive the run
        arrays = binding.copy_outputs_to_cpu()
        return dict(zip(self._output_names, arrays, strict=True))

    @staticmethod
    def _bind_input(binding: Any, name: str, value: np.ndarray) -> Any:
        import torch

        array = np.ascontiguousarray(value)
        tensor = torch.from_numpy(array).to("cuda", non_blocking=True)
        binding.bind_input(
            name=name,
            device_type="cuda",
            device_id=tensor.device.index or 0,
            element_type=array.dtype.type,
            shape=tuple(tensor.shape),
            buffer_ptr=tensor.data_ptr(),
        )
        return tensor

    def _close(self) -> None:
        super()._close()
        self._stream = None


@RUNNERS.register("ort-cuda")
class OrtCudaRunner(OrtGpuRunner):
    name = "ort-cuda"
    device = "cuda"
    extra = "gpu"
    install_hint = "install onnxruntime-gpu with `pip install torchship[gpu]`"
    providers = ("CUDAExecutionProvider", "CPUExecutionProvider")


@RUNNERS.register("ort-trt")
class OrtTensorrtRunner(OrtGpuRunner):
    name = "ort-trt"
    device = "cuda"
    extra = "gpu"
    install_hint = "install onnxruntime-gpu and TensorRT with `pip install torchship[gpu,tensorrt]`"
    providers = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")


def gpu_visible() -> bool:
    """True when an NVIDIA GPU is visible, via torch.cuda or the driver's /proc entries."""
    try:
        import torch

        if torch.cuda.is_available():
            return True
    except ImportError:
        pass
    gpus = Path("/proc/driver/nvidia/gpus")
    return gpus.is_dir() and any(gpus.iterdir())


def _gpu_note(device: str) -> str:
    if device != "cuda":
        return ""
    return "" if gpu_visible() else "; also no NVIDIA GPU is visible"
