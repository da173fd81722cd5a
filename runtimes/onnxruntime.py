"""ONNX Runtime runners: `ort-cpu`, `ort-cuda` and `ort-trt` (TensorRT execution provider)."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any, ClassVar

import numpy as np

from torchship.artifact import Artifact, Format
from torchship.errors import BackendUnavailableError, ModelLoadError
from torchship.runtimes.base import RUNNERS, Runner
from torchship.runtimes.torch_common import error_summary

__all__ = ["OrtRunner", "OrtCpuRunner", "OrtCudaRunner", "OrtTensorRTRunner"]

log = logging.getLogger(__name__)


class OrtRunner(Runner):
    """One InferenceSession per runner. `spinning=False` stops idle intra-op threads from
    busy-waiting, which side-by-side timing needs (spinning pools disturb each other)."""

    formats: ClassVar[tuple[Format, ...]] = (Format.ONNX,)
    #: Execution providers in priority order; the first one must be the one that runs.
    providers: ClassVar[tuple[str, ...]]
    #: Tells the bench layer this runner has a spinning thread pool it can switch off.
    has_spinning_pool: ClassVar[bool] = True

    def __init__(
        self, artifact: Artifact, *, threads: int | None = None, spinning: bool | None = None
    ) -> None:
        super().__init__(artifact, threads=threads)
        self.spinning = spinning
        self._session: Any = None

    @classmethod
    def unavailable_reason(cls) -> str | None:
        try:
            import onnxruntime
        except ImportError as exc:
            return f"onnxruntime does not import ({error_summary(exc)})"
        have = onnxruntime.get_available_providers()
        if cls.providers[0] not in have:
            return f"{cls.providers[0]} is not in this onnxruntime build (has {', '.join(have)})"
        return None

    def session_options(self) -> Any:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3  # keep ORT's own warnings off the user's terminal
        if self.threads is not None:
            options.intra_op_num_threads = self.threads
            options.inter_op_num_threads = 1
        if self.spinning is not None:
            options.add_session_config_entry(
                "session.intra_op.allow_spinning", "1" if self.spinning else "0"
            )
        return options

    def _load(self) -> None:
        import onnxruntime as ort

        try:
            session = ort.InferenceSession(
                str(self.artifact.path), sess_options=self.session_options(),
                providers=list(self.providers),
            )
        except Exception as exc:  # ORT raises its own Fail/InvalidGraph/... types
            raise ModelLoadError(
                f"{self.artifact.path}: onnxruntime cannot load it ({error_summary(exc)})"
            ) from exc
        # ORT silently falls back to CPU when a GPU provider fails to initialise.
        active = session.get_providers()
        if active[0] != self.providers[0]:
            raise BackendUnavailableError(
                f"runtime {self.name!r}: {self.providers[0]} failed to initialise "
                f"(session runs on {', '.join(active)}); check the CUDA/TensorRT libraries"
            )
        self._session = session
        self._output_names = [o.name for o in session.get_outputs()]
        log.debug("%s loaded %s with %s", self.name, self.artifact.path, active)

    def _infer(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        arrays = self._session.run(self._output_names, dict(feeds))
        return dict(zip(self._output_names, arrays, strict=True))

    def _close(self) -> None:
        # Dropping the session frees its thread pool (and GPU memory) now, not at GC time.
        self._session = None


@RUNNERS.register("ort-cpu")
class OrtCpuRunner(OrtRunner):
    name: ClassVar[str] = "ort-cpu"
    providers: ClassVar[tuple[str, ...]] = ("CPUExecutionProvider",)


@RUNNERS.register("ort-cuda")
class OrtCudaRunner(OrtRunner):
    name: ClassVar[str] = "ort-cuda"
    device: ClassVar[str] = "cuda"
    extra: ClassVar[str | None] = "gpu"
    providers: ClassVar[tuple[str, ...]] = ("CUDAExecutionProvider", "CPUExecutionProvider")


@RUNNERS.register("ort-trt")
class OrtTensorRTRunner(OrtRunner):
    name: ClassVar[str] = "ort-trt"
    device: ClassVar[str] = "cuda"
    extra: ClassVar[str | None] = "gpu"
    providers: ClassVar[tuple[str, ...]] = (
        "TensorrtExecutionProvider",
        "CUDAExecutionProvider",
        "CPUExecutionProvider",
    )
