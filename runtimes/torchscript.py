"""`torchscript` runtime: a `torch.jit` archive (`.ts` / `.pt`)."""

from __future__ import annotations

import logging
from collections.abc import Mapping

import numpy as np
import torch

from torchship.artifact import Format
from torchship.errors import ModelLoadError
from torchship.loaded import flatten_outputs, to_torch_inputs
from torchship.runtimes.base import RUNNERS, Runner
from torchship.runtimes.torch_eager import (
    _ThreadsMixin,
    first_line,
    name_outputs,
    require_zip_archive,
)

__all__ = ["TorchScriptRunner"]

log = logging.getLogger(__name__)


@RUNNERS.register("torchscript")
class TorchScriptRunner(_ThreadsMixin, Runner):
    """Runs a TorchScript archive on CPU with torch.jit.load."""

    name = "torchscript"
    formats = (Format.TORCHSCRIPT,)

    @classmethod
    def unavailable_reason(cls) -> str | None:
        return None

    def _load(self) -> None:
        path = self.artifact.path
        require_zip_archive(path, kind="TorchScript")
        try:
            module = torch.jit.load(str(path), map_location="cpu")
        except Exception as exc:  # RuntimeError/ValueError for a bad or missing archive
            raise ModelLoadError(
                f"{path}: not a loadable TorchScript archive ({first_line(exc)})"
            ) from exc
        module.eval()
        self._module = module
        self._apply_threads()

    def _infer(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        with torch.inference_mode():
            result = self._module(*to_torch_inputs(self.inputs, dict(feeds)))
        return name_outputs(self.artifact.outputs, flatten_outputs(result))

    def _close(self) -> None:
        self._module = None
        self._restore_threads()
