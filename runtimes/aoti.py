"""`aoti` runtime: an AOTInductor package (`.aoti.pt2`), native code loaded into this process.

The package is compiled by the exporter (`exporter/aoti.py`); running it needs torch only, no
compiler. Its OpenMP kernels were generated for a thread count (recorded in the artifact's
details); `threads` sets torch's pool for whatever runs outside them.
"""

from __future__ import annotations

import logging
import zipfile
from pathlib import Path
from typing import Any

import torch

from torchship.artifact import Format
from torchship.errors import ModelLoadError, first_line
from torchship.runtimes.base import RUNNERS
from torchship.runtimes.torch_eager import TorchModuleRunner

__all__ = ["AotiRunner", "aoti_unavailable_reason"]

log = logging.getLogger(__name__)


def aoti_unavailable_reason() -> str | None:
    """None when this torch can load AOTInductor packages, else why not."""
    try:
        from torch._inductor import aoti_load_package  # noqa: F401
    except ImportError as exc:
        return f"torch {torch.__version__} has no AOTInductor loader ({first_line(exc)})"
    return None


@RUNNERS.register("aoti")
class AotiRunner(TorchModuleRunner):
    """Loads the package with `torch._inductor.aoti_load_package` and calls it on CPU tensors."""

    name = "aoti"
    formats = (Format.AOTI,)

    @classmethod
    def unavailable_reason(cls) -> str | None:
        return aoti_unavailable_reason()

    def _load_module(self) -> Any:
        from torch._inductor import aoti_load_package

        path = Path(self.artifact.path)
        if not path.is_file():
            raise ModelLoadError(f"{path}: no such AOTInductor package")
        if not zipfile.is_zipfile(path):
            raise ModelLoadError(f"{path}: not an AOTInductor package (not a zip file)")
        try:
            return aoti_load_package(str(path))
        except Exception as exc:  # RuntimeError from the C++ loader, with several lines
            raise ModelLoadError(
                f"{path}: not a loadable AOTInductor package ({first_line(exc)})"
            ) from exc

    def facts(self) -> dict[str, object]:
        compiled = self.artifact.details.get("compiled_threads")
        return {"compiled_threads": compiled} if compiled is not None else {}
