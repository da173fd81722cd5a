"""`torch` runtime: an in-memory nn.Module (eager) or a torch.export `.pt2` file."""

from __future__ import annotations

import logging
import zipfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from torchship.artifact import Format
from torchship.errors import ModelLoadError, first_line
from torchship.loaded import flatten_outputs, to_torch_inputs
from torchship.runtimes.base import RUNNERS, Runner

__all__ = ["TorchModuleRunner", "TorchRunner", "name_outputs", "require_zip_archive"]

log = logging.getLogger(__name__)


def name_outputs(names: Sequence[str], arrays: Sequence[np.ndarray]) -> dict[str, np.ndarray]:
    """Pair outputs with their names; without names use `output` / `output_{i}`."""
    if not names:
        if len(arrays) == 1:
            return {"output": arrays[0]}
        return {f"output_{i}": a for i, a in enumerate(arrays)}
    if len(names) != len(arrays):
        raise ModelLoadError(
            f"model returned {len(arrays)} outputs, the artifact describes {len(names)}: "
            f"{', '.join(names)}"
        )
    return dict(zip(names, arrays, strict=True))


def require_zip_archive(path: Path, *, kind: str) -> None:
    """ModelLoadError unless `path` is a zip file (both .ts and .pt2 archives are zips).

    Checked up front because torch logs a full traceback before raising on a corrupt archive.
    """
    if not Path(path).is_file():
        raise ModelLoadError(f"{path}: no such {kind} file")
    if not zipfile.is_zipfile(path):
        raise ModelLoadError(
            f"{path}: not a {kind} archive (not a zip file; corrupt or truncated?)"
        )


class TorchModuleRunner(Runner):
    """Base of runners that hold a torch module: thread count, inference, release.

    Subclasses implement `_load_module`; `threads` goes to torch.set_num_threads while loaded and
    the previous value comes back on close.
    """

    _module: Any = None
    _previous_threads: int | None = None

    def _load_module(self) -> Any:
        raise NotImplementedError

    def _load(self) -> None:
        self._module = self._load_module()
        if self.threads is not None:
            self._previous_threads = torch.get_num_threads()
            torch.set_num_threads(self.threads)

    def _infer(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        with torch.inference_mode():
            result = self._module(*to_torch_inputs(self.inputs, dict(feeds)))
        return name_outputs(self.artifact.outputs, flatten_outputs(result))

    def _close(self) -> None:
        self._module = None
        if self._previous_threads is not None:
            torch.set_num_threads(self._previous_threads)
            self._previous_threads = None


@RUNNERS.register("torch")
class TorchRunner(TorchModuleRunner):
    """Eager PyTorch: `Format.EAGER` modules and `Format.EXPORTED_PROGRAM` files."""

    name = "torch"
    formats = (Format.EAGER, Format.EXPORTED_PROGRAM)

    @classmethod
    def unavailable_reason(cls) -> str | None:
        return None

    def _load_module(self) -> torch.nn.Module:
        if self.artifact.format is not Format.EAGER:
            return _load_exported_program(self.artifact.path)
        module = self.artifact.module
        if not isinstance(module, torch.nn.Module):
            raise ModelLoadError(
                f"eager artifact holds a {type(module).__name__}, expected a torch.nn.Module"
            )
        return module.eval()


def _load_exported_program(path: Path) -> torch.nn.Module:
    # The unlifted module refuses .eval()/.train(); torch.export already traced it in eval mode.
    require_zip_archive(path, kind="torch.export")
    try:
        return torch.export.load(path).module()
    except Exception as exc:  # torch raises many types for a bad archive
        raise ModelLoadError(
            f"{path}: not a loadable torch.export archive ({first_line(exc)})"
        ) from exc
