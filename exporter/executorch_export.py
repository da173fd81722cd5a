"""ExecuTorch: lower a torch.export program to an XNNPACK `.pte` (`to_edge_transform_and_lower`).

ExecuTorch plans memory ahead of time, so every dynamic dim needs an upper bound (an unbounded
dim is planned at its example size and any larger input fails). Each dim is bounded by
`max(MAX_DYNAMIC, its example size)`; the bounds go into the artifact's details, where the
runner checks feeds against them.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from torchship.artifact import Artifact, Format, Precision
from torchship.errors import BackendUnavailableError
from torchship.exporter.base import EXPORTERS, ExportOptions, export_feeds, quiet_torch
from torchship.files import atomic_path
from torchship.loaded import LoadedModel, eval_mode, to_torch_inputs
from torchship.runtimes.executorch import executorch_unavailable_reason
from torchship.specs import InputSpec

__all__ = ["MAX_DYNAMIC", "bounded_dims", "export_executorch", "lower_to_executorch"]

log = logging.getLogger(__name__)

#: Default upper bound of a dynamic dim (batch, sequence) in a lowered program.
MAX_DYNAMIC = 64


def bounded_dims(model: LoadedModel) -> dict[str, int]:
    """Each dynamic dim name -> its upper bound: MAX_DYNAMIC or the example size if larger."""
    feeds = export_feeds(model)
    bounds: dict[str, int] = {}
    for spec in model.inputs:
        for axis, name in spec.dynamic.items():
            size = int(np.shape(feeds[spec.name])[axis])
            bounds[name] = max(bounds.get(name, MAX_DYNAMIC), size)
    return bounds


def _dynamic_shapes(specs: Sequence[InputSpec], bounds: dict[str, int]):
    if not bounds:
        return None
    dims = {name: torch.export.Dim(name, min=1, max=bound) for name, bound in bounds.items()}
    return tuple({axis: dims[name] for axis, name in s.dynamic.items()} for s in specs)


def bounded_program(model: LoadedModel, bounds: dict[str, int]) -> torch.export.ExportedProgram:
    """torch.export of `model` with every dynamic dim bounded by `bounds`.

    The example is grown to the bounds: traced at a small size (below 16), the XNNPACK lowering
    planned a batch of 15 whatever the bound (executorch 1.5.1).
    """
    module = eval_mode(model.module)
    feeds = export_feeds(model)
    for spec in model.inputs:
        for axis, name in spec.dynamic.items():
            size = np.shape(feeds[spec.name])[axis]
            rows = np.arange(bounds[name]) % size
            feeds[spec.name] = np.ascontiguousarray(np.take(feeds[spec.name], rows, axis=axis))
    args = to_torch_inputs(model.inputs, feeds)
    with quiet_torch():
        return torch.export.export(
            module, args, dynamic_shapes=_dynamic_shapes(model.inputs, bounds)
        )


def lower_to_executorch(program: torch.export.ExportedProgram, path: Path) -> float:
    """Lower `program` to the XNNPACK delegate and write the `.pte` atomically; seconds taken.

    BackendUnavailableError when executorch is not installed.
    """
    reason = executorch_unavailable_reason()
    if reason is not None:
        raise BackendUnavailableError(f"executorch: {reason}")
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower

    start = time.perf_counter()
    with quiet_torch():
        lowered = to_edge_transform_and_lower(program, partitioner=[XnnpackPartitioner()])
        buffer = lowered.to_executorch().buffer
    with atomic_path(path, suffix=".pte") as tmp:
        Path(tmp).write_bytes(buffer)
    seconds = time.perf_counter() - start
    log.info("executorch: lowered %s to XNNPACK in %.1f s", path.name, seconds)
    return seconds


@EXPORTERS.register("executorch")
def export_executorch(model: LoadedModel, path: Path, *, options: ExportOptions) -> Artifact:
    """Write an XNNPACK `.pte`, dynamic along the specs' dims up to their bounds."""
    bounds = bounded_dims(model)
    seconds = lower_to_executorch(bounded_program(model, bounds), path)
    return Artifact.create(
        path,
        format=Format.EXECUTORCH,
        inputs=model.inputs,
        outputs=model.outputs,
        precision=Precision.FP32,
        details=lowering_details(bounds, seconds),
    )


def lowering_details(bounds: dict[str, int], seconds: float) -> dict:
    return {
        "exporter": "executorch",
        "backend": "xnnpack",
        "max_dims": bounds,
        "lower_s": round(seconds, 2),
    }
