"""OpenVINO runtimes on CPU: `openvino` (f32) and `openvino-bf16` for `.onnx` files.

Both run FP32 ONNX and torchship's INT8 QDQ files as they are. The inference precision is
always set explicitly: without a hint OpenVINO's CPU plugin computes in bf16 on CPUs with
avx512_bf16/AMX, which changes results (docs/design.md, "Measured facts that shaped this").
One stream and `threads` inference threads, like the other CPU runners; openvino is imported
inside methods so `import torchship.runtimes` stays cheap.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from torchship.artifact import Format
from torchship.errors import ModelLoadError, first_line
from torchship.runtimes.base import RUNNERS, Runner

__all__ = ["OpenVinoRunner", "OpenVinoF32Runner", "OpenVinoBf16Runner", "openvino_version"]

log = logging.getLogger(__name__)

_INSTALL = "pip install torchship[openvino]"


def openvino_version() -> str | None:
    try:
        import openvino
    except ImportError:
        return None
    return openvino.get_version()


class OpenVinoRunner(Runner):
    """An OpenVINO CompiledModel on the CPU device with an explicit inference precision."""

    formats = (Format.ONNX,)
    extra = "openvino"
    #: INFERENCE_PRECISION_HINT value; the CPU capability it needs (None: every CPU has it).
    precision: ClassVar[str]
    capability: ClassVar[str | None] = None

    def __init__(self, artifact, *, threads: int | None = None) -> None:
        super().__init__(artifact, threads=threads)
        self._compiled: Any = None
        self._request: Any = None

    @classmethod
    def unavailable_reason(cls) -> str | None:
        try:
            import openvino
        except ImportError:
            return f"openvino is not installed ({_INSTALL})"
        core = openvino.Core()
        if "CPU" not in core.available_devices:
            return f"openvino {openvino.get_version()} sees no CPU device"
        if cls.capability is not None:
            have = core.get_property("CPU", "OPTIMIZATION_CAPABILITIES")
            if cls.capability not in have:
                return (
                    f"this CPU has no {cls.capability} support in OpenVINO (capabilities: "
                    f"{', '.join(have)}); {cls.precision} needs avx512_bf16 or AMX"
                )
        return None

    def config(self) -> dict[str, object]:
        """The compile_model properties: precision, one stream, latency hint, threads."""
        config: dict[str, object] = {
            "INFERENCE_PRECISION_HINT": self.precision,
            "NUM_STREAMS": 1,
            "PERFORMANCE_HINT": "LATENCY",
        }
        if self.threads is not None:
            config["INFERENCE_NUM_THREADS"] = self.threads
        return config

    def _load(self) -> None:
        import openvino

        path = Path(self.artifact.path)
        if not path.is_file():
            raise ModelLoadError(f"{path}: no such ONNX file")
        core = openvino.Core()
        try:
            model = core.read_model(str(path))
            self._check_input_names(model)
            self._compiled = core.compile_model(model, "CPU", self.config())
        except ModelLoadError:
            raise
        except Exception as exc:  # OpenVINO raises RuntimeError with multi-line text
            raise ModelLoadError(f"{path}: openvino cannot load it ({first_line(exc)})") from exc
        self._request = self._compiled.create_infer_request()
        self._outputs = [(o.get_any_name(), o) for o in self._compiled.outputs]
        log.info("%s: loaded %s with %s", self.name, path.name, self.facts())

    def _check_input_names(self, model: Any) -> None:
        have = {name for port in model.inputs for name in port.get_names()}
        missing = sorted(s.name for s in self.inputs if s.name not in have)
        if missing:
            raise ModelLoadError(
                f"{self.artifact.path}: the ONNX graph has no input {', '.join(missing)}; "
                f"it takes {sorted(have)}"
            )

    def _infer(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        inputs = {s.name: np.ascontiguousarray(feeds[s.name]) for s in self.inputs}
        result = self._request.infer(inputs)
        # The request owns its output buffers: copy them before the next call reuses them.
        return {name: np.array(result[port]) for name, port in self._outputs}

    def facts(self) -> dict[str, object]:
        if self._compiled is None:
            return {}
        precision = self._compiled.get_property("INFERENCE_PRECISION_HINT")
        return {
            "inference_precision": _precision_name(precision),
            "threads": int(self._compiled.get_property("INFERENCE_NUM_THREADS")),
            "streams": int(self._compiled.get_property("NUM_STREAMS")),
            "openvino": openvino_version(),
        }

    def _close(self) -> None:
        self._request = None
        self._compiled = None


def _precision_name(element_type: Any) -> str:
    """OpenVINO's element type as f32/bf16/f16 (`Type.bf16` prints as <Type: 'bfloat16'>)."""
    name = getattr(element_type, "get_type_name", lambda: str(element_type))()
    return {"float32": "f32", "bfloat16": "bf16", "float16": "f16"}.get(name, name)


@RUNNERS.register("openvino")
class OpenVinoF32Runner(OpenVinoRunner):
    name = "openvino"
    precision = "f32"


@RUNNERS.register("openvino-bf16")
class OpenVinoBf16Runner(OpenVinoRunner):
    """Computes in bf16 where the CPU has it: no calibration, errors ~1e-2 (cosine-checked)."""

    name = "openvino-bf16"
    precision = "bf16"
    capability = "BF16"
    computes_in = "bf16"
