"""CUDA plumbing shared by the GPU runners, and the `torch-cuda` runtime.

GPU runners copy inputs to the device, enqueue the model on a CUDA stream between two CUDA
events, and copy the outputs back. The bench then reports the device time between the events
(`ComputeEventTimer`, clock `cuda-event`, copies excluded) as `latency_ms` (and throughput from
it), while the host wall time of the whole call, copies included, is kept beside it
(`host_samples_ms`) and saved as `host_latency_ms`.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import numpy as np
import torch

from torchship.artifact import Format, Precision
from torchship.loaded import to_torch_inputs
from torchship.runtimes.base import RUNNERS
from torchship.runtimes.timing import HostTimer, Timer
from torchship.runtimes.torch_eager import TorchRunner, name_outputs

__all__ = [
    "ComputeEvents",
    "ComputeEventTimer",
    "GpuTimedMixin",
    "TorchCudaRunner",
    "cuda_reason",
    "torch_dtype",
]

log = logging.getLogger(__name__)


def cuda_reason() -> str | None:
    """None when torch sees a CUDA GPU, else why not."""
    if not torch.cuda.is_available():
        return f"torch {torch.__version__} sees no CUDA GPU (torch.cuda.is_available() is False)"
    return None


def torch_dtype(dtype: np.dtype) -> torch.dtype:
    """The torch dtype of a numpy dtype (bool, ints, floats)."""
    return torch.from_numpy(np.empty(0, dtype=dtype)).dtype


class ComputeEvents:
    """Two CUDA events around work enqueued on `stream`; `elapsed_ms()` after it finished."""

    def __init__(self, stream: Any) -> None:
        self.stream = stream
        self._start = torch.cuda.Event(enable_timing=True)
        self._end = torch.cuda.Event(enable_timing=True)

    @contextlib.contextmanager
    def around(self) -> Iterator[None]:
        self._start.record(self.stream)
        yield
        self._end.record(self.stream)

    def elapsed_ms(self) -> float:
        self._end.synchronize()
        return float(self._start.elapsed_time(self._end))


class ComputeEventTimer:
    """Device time of a GPU runner's compute (CUDA events), host-to-device copies excluded.

    The host wall time of each whole call (copies included) is kept in `host_samples_ms`.
    """

    clock = "cuda-event"
    includes_copies = False

    def __init__(self, runner: Any) -> None:
        self._runner = runner
        self.host_samples_ms: list[float] = []

    def time_call(self, fn: Callable[[], Any]) -> float:
        start = time.perf_counter_ns()
        fn()
        self.host_samples_ms.append((time.perf_counter_ns() - start) / 1e6)
        return self._runner.last_compute_ms


class GpuTimedMixin:
    """For runners that set `last_compute_ms` on every infer: CUDA-event timing in the bench."""

    #: Read by the bench: the timed figure leaves out host<->device copies.
    timing_includes_copies = False
    last_compute_ms: float = float("nan")

    def make_timer(self) -> Timer:
        if torch.cuda.is_available():
            return ComputeEventTimer(self)
        return HostTimer()


@RUNNERS.register("torch-cuda")
class TorchCudaRunner(GpuTimedMixin, TorchRunner):
    """Eager PyTorch / torch.export modules on the GPU; fp16 artifacts run in half precision."""

    name = "torch-cuda"
    device = "cuda"

    @classmethod
    def unavailable_reason(cls) -> str | None:
        return cuda_reason()

    def _load(self) -> None:
        super()._load()
        self._half = self.artifact.precision is Precision.FP16
        # A copy: moving the caller's eager module to the GPU (or to fp16) would change it.
        module = (
            copy.deepcopy(self._module) if self.artifact.format is Format.EAGER else self._module
        )
        module = module.to("cuda")
        self._module = module.half() if self._half else module
        self._stream = torch.cuda.Stream()
        log.info("torch-cuda: %s on %s", self.artifact.path.name, torch.cuda.get_device_name())

    def _infer(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        events = ComputeEvents(self._stream)
        with torch.inference_mode(), torch.cuda.stream(self._stream):
            inputs = [self._to_device(t) for t in to_torch_inputs(self.inputs, dict(feeds))]
            with events.around():
                result = self._module(*inputs)
            arrays = [self._to_host(t) for t in flatten_outputs_on_device(result)]
        self.last_compute_ms = events.elapsed_ms()
        return name_outputs(self.artifact.outputs, arrays)

    def _to_device(self, tensor: torch.Tensor) -> torch.Tensor:
        tensor = tensor.to("cuda", non_blocking=True)
        return tensor.half() if self._half and tensor.is_floating_point() else tensor

    @staticmethod
    def _to_host(tensor: torch.Tensor) -> np.ndarray:
        if tensor.dtype in (torch.float16, torch.bfloat16):
            tensor = tensor.float()  # compared with fp32 references
        return tensor.cpu().numpy()

    def _close(self) -> None:
        super()._close()
        self._stream = None
        torch.cuda.empty_cache()


def flatten_outputs_on_device(result: object) -> list[torch.Tensor]:
    """Output tensors in order, still on the device (`flatten_outputs` returns numpy)."""
    if isinstance(result, torch.Tensor):
        return [result]
    if isinstance(result, Mapping):
        return [t for v in result.values() for t in flatten_outputs_on_device(v)]
    if isinstance(result, (list, tuple)):
        return [t for v in result for t in flatten_outputs_on_device(v)]
    raise TypeError(f"model output of type {type(result).__name__} is not a tensor")
