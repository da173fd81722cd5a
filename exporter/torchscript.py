"""TorchScript export: torch.jit.trace on the example inputs (or torch.jit.script), then save."""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from torchship.artifact import Artifact, Format
from torchship.exporter.base import EXPORTERS, ExportOptions, export_args, quiet_torch
from torchship.files import atomic_path
from torchship.loaded import LoadedModel, eval_mode

__all__ = ["export_torchscript"]

log = logging.getLogger(__name__)


@EXPORTERS.register("torchscript")
def export_torchscript(model: LoadedModel, path: Path, *, options: ExportOptions) -> Artifact:
    """Write a TorchScript archive; traced unless `options.script`."""
    module = eval_mode(model.module)
    with quiet_torch(), torch.no_grad():
        if options.script:
            scripted = torch.jit.script(module)
        else:
            # Parity checks the result on other inputs and batch sizes; the tracer's own
            # check re-runs the model and trips on harmless nondeterminism.
            scripted = torch.jit.trace(module, export_args(model), check_trace=False, strict=False)
        with atomic_path(path, suffix=".ts") as tmp:
            torch.jit.save(scripted, str(tmp))
    method = "script" if options.script else "trace"
    log.info("wrote %s (torch.jit.%s)", path, method)
    return Artifact.create(
        path,
        format=Format.TORCHSCRIPT,
        inputs=model.inputs,
        outputs=model.outputs,
        details={"exporter": f"torch.jit.{method}"},
    )
