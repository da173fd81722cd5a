"""`torchscript` runtime: a `torch.jit` archive (`.ts` / `.pt`)."""

from __future__ import annotations

import logging

import torch

from torchship.artifact import Format
from torchship.errors import ModelLoadError, first_line
from torchship.runtimes.base import RUNNERS
from torchship.runtimes.torch_eager import (
    TorchModuleRunner,
    require_zip_archive,
)

__all__ = ["TorchScriptRunner"]

log = logging.getLogger(__name__)


@RUNNERS.register("torchscript")
class TorchScriptRunner(TorchModuleRunner):
    """Runs a TorchScript archive on CPU with torch.jit.load."""

    name = "torchscript"
    formats = (Format.TORCHSCRIPT,)

    @classmethod
    def unavailable_reason(cls) -> str | None:
        return None

    def _load_module(self) -> torch.jit.ScriptModule:
        path = self.artifact.path
        require_zip_archive(path, kind="TorchScript")
        try:
            module = torch.jit.load(str(path), map_location="cpu")
        except Exception as exc:  # RuntimeError/ValueError for a bad or missing archive
            raise ModelLoadError(
                f"{path}: not a loadable TorchScript archive ({first_line(exc)})"
            ) from exc
        return module.eval()
