"""torch.export: an ExportedProgram with the specs' dynamic dims, saved as `.pt2`."""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from torchship.artifact import Artifact, Format
from torchship.exporter.base import (
    EXPORTERS,
    ExportOptions,
    dynamic_shapes_for,
    export_args,
    quiet_torch,
)
from torchship.files import atomic_path
from torchship.loaded import LoadedModel, eval_mode

__all__ = ["export_exported_program", "to_exported_program"]

log = logging.getLogger(__name__)


def to_exported_program(model: LoadedModel) -> torch.export.ExportedProgram:
    """torch.export.export of the model, dynamic along the dims the specs name."""
    module = eval_mode(model.module)
    with quiet_torch():
        return torch.export.export(
            module,
            export_args(model),
            dynamic_shapes=dynamic_shapes_for(model.inputs, model.module),
        )


@EXPORTERS.register("exported-program")
def export_exported_program(model: LoadedModel, path: Path, *, options: ExportOptions) -> Artifact:
    """Write a `.pt2` ExportedProgram archive."""
    program = to_exported_program(model)
    with atomic_path(path, suffix=".pt2") as tmp, quiet_torch():
        torch.export.save(program, str(tmp))
    log.info("wrote %s (torch.export)", path)
    return Artifact.create(
        path,
        format=Format.EXPORTED_PROGRAM,
        inputs=model.inputs,
        outputs=model.outputs,
        details={"exporter": "torch.export"},
    )
