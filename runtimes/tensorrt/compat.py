"""What the installed TensorRT can do, decided once from its version and its Python API.

TensorRT 8.6 (still shipped on Jetson) needs the EXPLICIT_BATCH network flag and has no strongly
typed networks; 9/10 add STRONGLY_TYPED and ignore EXPLICIT_BATCH; 10.1 deprecates the implicit
INT8 calibrators; 11 removes them together with the weak-typing precision flags (FP16/INT8), so
every network is strongly typed. Callers branch on `TrtCapabilities`, never on `trt` directly.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import re
from dataclasses import dataclass
from types import ModuleType
from typing import Any

from torchship.errors import BackendUnavailableError

__all__ = [
    "MIN_VERSION",
    "CALIBRATOR_CLASSES",
    "TrtCapabilities",
    "capabilities",
    "import_tensorrt",
    "parse_version",
    "routed_logger",
]

log = logging.getLogger(__name__)

#: The oldest TensorRT this backend drives (name-based I/O tensors and execute_async_v3).
MIN_VERSION = (8, 6)
#: --calibrator name -> the TensorRT class implementing it.
CALIBRATOR_CLASSES = {"entropy": "IInt8EntropyCalibrator2", "minmax": "IInt8MinMaxCalibrator"}


def parse_version(text: str) -> tuple[int, int, int]:
    """(major, minor, patch) from a version string like '10.3.0.26' or '8.6.1.post1'."""
    numbers = [int(n) for n in re.findall(r"\d+", text)[:3]]
    while len(numbers) < 3:
        numbers.append(0)
    return numbers[0], numbers[1], numbers[2]


@dataclass(frozen=True)
class TrtCapabilities:
    """The features this backend branches on, read from the installed module."""

    version: str
    #: 8.x: `create_network` must be given EXPLICIT_BATCH (implicit batch is the 8.x default).
    needs_explicit_batch: bool
    #: 9+: NetworkDefinitionCreationFlag.STRONGLY_TYPED exists.
    strongly_typed: bool
    #: < 11: BuilderFlag.FP16 / BuilderFlag.INT8 (weak typing) exist.
    precision_flags: bool
    #: The --calibrator names whose TensorRT class exists in this release.
    calibrators: tuple[str, ...]
    #: 8.6+: engines can be built for every GPU from Ampere on.
    hardware_compat: bool
    #: 8.5+: set_tensor_address / set_input_shape / execute_async_v3.
    tensor_api: bool

    @property
    def major_minor(self) -> tuple[int, int]:
        return parse_version(self.version)[:2]

    @property
    def calibrators_deprecated(self) -> bool:
        """TensorRT 10.1 deprecated implicit calibration in favour of explicit Q/DQ."""
        return self.major_minor >= (10, 1)


def capabilities(trt: Any) -> TrtCapabilities:
    """Read the capabilities of an imported `tensorrt` module (real or a test double)."""
    version = str(getattr(trt, "__version__", "0"))
    creation = getattr(trt, "NetworkDefinitionCreationFlag", None)
    builder_flags = getattr(trt, "BuilderFlag", None)
    context_cls = getattr(trt, "IExecutionContext", None)
    return TrtCapabilities(
        version=version,
        needs_explicit_batch=parse_version(version)[0] < 9 and hasattr(creation, "EXPLICIT_BATCH"),
        strongly_typed=hasattr(creation, "STRONGLY_TYPED"),
        precision_flags=hasattr(builder_flags, "FP16") and hasattr(builder_flags, "INT8"),
        calibrators=tuple(n for n, cls in CALIBRATOR_CLASSES.items() if hasattr(trt, cls)),
        hardware_compat=hasattr(trt, "HardwareCompatibilityLevel"),
        tensor_api=context_cls is None or hasattr(context_cls, "execute_async_v3"),
    )


def import_tensorrt() -> tuple[ModuleType, TrtCapabilities]:
    """The `tensorrt` module and its capabilities; BackendUnavailableError when absent/too old."""
    if importlib.util.find_spec("tensorrt") is None:
        raise BackendUnavailableError(
            "the tensorrt package is not installed (pip install torchship[tensorrt])"
        )
    try:
        trt = importlib.import_module("tensorrt")
    except Exception as exc:  # a broken install raises OSError/ImportError from its .so files
        raise BackendUnavailableError(
            f"tensorrt is installed but cannot be imported: {exc}"
        ) from exc
    caps = capabilities(trt)
    if parse_version(caps.version)[:2] < MIN_VERSION or not caps.tensor_api:
        wanted = ".".join(map(str, MIN_VERSION))
        raise BackendUnavailableError(
            f"TensorRT {caps.version} is too old; torchship needs TensorRT >= {wanted}"
        )
    return trt, caps


def routed_logger(trt: Any, *, name: str = __name__) -> Any:
    """A `trt.ILogger` that sends TensorRT's messages to `logging` (errors kept for reports).

    TensorRT's VERBOSE goes to DEBUG, INFO to DEBUG too (it is very chatty), WARNING to WARNING,
    ERROR and INTERNAL_ERROR to ERROR. `logger.errors` lists the error messages seen.
    """
    target = logging.getLogger(name)
    severity = trt.ILogger.Severity
    levels = {
        severity.INTERNAL_ERROR: logging.ERROR,
        severity.ERROR: logging.ERROR,
        severity.WARNING: logging.WARNING,
        severity.INFO: logging.DEBUG,
        severity.VERBOSE: logging.DEBUG,
    }

    class RoutedLogger(trt.ILogger):
        def __init__(self) -> None:
            trt.ILogger.__init__(self)
            self.errors: list[str] = []

        def log(self, sev: Any, msg: str) -> None:
            level = levels.get(sev, logging.INFO)
            if level >= logging.ERROR:
                self.errors.append(str(msg).strip())
            target.log(level, "TensorRT: %s", msg)

    return RoutedLogger()
