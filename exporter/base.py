"""Export options, the exporter registry and `export_model`, which writes one file per format."""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from torchship.artifact import Artifact, Format
from torchship.errors import ConfigError, ExportError, ToolchainError, first_line
from torchship.interrupts import reraise_interrupt
from torchship.loaded import LoadedModel, eval_mode, to_torch_inputs
from torchship.registry import Registry
from torchship.specs import InputSpec

__all__ = [
    "DEFAULT_OPSET",
    "MIN_OPSET",
    "ExportOptions",
    "Exporter",
    "EXPORTERS",
    "export_model",
    "export_feeds",
    "export_args",
    "quiet_torch",
    "supported_opsets",
]

log = logging.getLogger(__name__)

DEFAULT_OPSET = 18
#: The oldest ONNX opset torch.onnx writes.
MIN_OPSET = 7


def supported_opsets() -> range:
    """The opsets an export may ask for: MIN_OPSET up to the newest the onnx package knows."""
    import onnx

    return range(MIN_OPSET, onnx.defs.onnx_opset_version() + 1)


@dataclass(frozen=True)
class ExportOptions:
    """How to export. `None` means the default (opset 18; try dynamo, fall back to legacy)."""

    opset: int | None = None
    script: bool = False
    dynamo: bool | None = None
    validate: bool = True
    #: AOTInductor generates its OpenMP kernels for a thread count (default: torch's).
    threads: int | None = None

    def __post_init__(self) -> None:
        if self.threads is not None and self.threads < 1:
            raise ConfigError(f"--threads {self.threads}: must be >= 1")
        if self.opset is None:
            return
        valid = supported_opsets()
        is_int = isinstance(self.opset, int) and not isinstance(self.opset, bool)
        if not is_int or self.opset not in valid:
            raise ConfigError(
                f"--opset {self.opset}: not a supported ONNX opset; valid: {valid.start}.."
                f"{valid.stop - 1} (default {DEFAULT_OPSET})"
            )

    @property
    def opset_version(self) -> int:
        return DEFAULT_OPSET if self.opset is None else self.opset


Exporter = Callable[..., Artifact]
#: format name -> `fn(model, path, *, options) -> Artifact`
EXPORTERS: Registry[Exporter] = Registry("format")


@contextlib.contextmanager
def quiet_torch() -> Iterator[None]:
    """Silence torch's deprecation/tracer warnings for the duration of an export."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", FutureWarning)
        warnings.simplefilter("ignore", UserWarning)
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        yield


def export_feeds(model: LoadedModel) -> dict[str, np.ndarray]:
    """The example inputs, with every dynamic axis of size 0 or 1 grown to 2.

    torch.export specializes dims whose example size is 0 or 1, so a dynamic dim needs >= 2.
    """
    feeds = {}
    for spec in model.inputs:
        value = np.asarray(model.example[spec.name])
        for axis in spec.dynamic:
            if value.shape[axis] == 1:
                value = np.repeat(value, 2, axis=axis)
            elif value.shape[axis] == 0:
                shape = list(value.shape)
                shape[axis] = 2
                value = np.zeros(shape, dtype=value.dtype)
        feeds[spec.name] = np.asarray(value, order="C")  # keeps 0-d inputs 0-d
    return feeds


def export_args(model: LoadedModel) -> tuple[torch.Tensor, ...]:
    return to_torch_inputs(model.inputs, export_feeds(model))


def dynamic_shapes_for(
    specs: Sequence[InputSpec], module: torch.nn.Module | None = None
) -> tuple[dict[int, object], ...] | None:
    """torch.export dynamic_shapes (positional), one `Dim` per dim name shared across inputs.

    A module may bound a dim with a `torchship_dim_max` dict (name -> largest size): a
    transformer's sequence cannot pass its position table, and torch.export refuses an
    unbounded dim that the model's guards bound.
    """
    if not any(s.dynamic for s in specs):
        return None
    bounds = getattr(module, "torchship_dim_max", None) or {}
    dims: dict[str, object] = {}
    for spec in specs:
        for name in spec.dynamic.values():
            dims.setdefault(name, torch.export.Dim(name, max=bounds.get(name)))
    return tuple({axis: dims[name] for axis, name in s.dynamic.items()} for s in specs)


def export_model(
    model: LoadedModel,
    out_dir: Path,
    *,
    formats: Sequence[str],
    options: ExportOptions | None = None,
    stem: str = "model",
) -> list[Artifact]:
    """Export `model` to every format in `formats` under `out_dir` (`model.ts`, `.onnx`, `.pt2`).

    Each file is written atomically; a failure raises ExportError naming the format.
    """
    options = options or ExportOptions()
    _register_builtin()
    exporters = [(name, EXPORTERS.get(name)) for name in formats]
    if not exporters:
        raise ConfigError(f"no export format given; valid: {', '.join(EXPORTERS.names())}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    eval_mode(model.module)
    artifacts = []
    for name, exporter in exporters:
        path = out_dir / f"{stem}{Format(name).suffix}"
        log.info("exporting %s -> %s", name, path)
        artifacts.append(_run_exporter(name, exporter, model, path, options))
    return artifacts


def _run_exporter(
    name: str, exporter: Exporter, model: LoadedModel, path: Path, options: ExportOptions
) -> Artifact:
    try:
        return exporter(model, path, options=options)
    except ToolchainError:
        raise
    except Exception as exc:
        reraise_interrupt(exc)  # an interrupt inside torch is not a failed export
        raise ExportError(f"{name} export of {path.name} failed: {first_line(exc)}") from exc


def _register_builtin() -> None:
    # The exporters register themselves on import.
    import torchship.exporter.aoti  # noqa: F401
    import torchship.exporter.executorch_export  # noqa: F401
    import torchship.exporter.exported_program  # noqa: F401
    import torchship.exporter.onnx_export  # noqa: F401
    import torchship.exporter.torchscript  # noqa: F401
