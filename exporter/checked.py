"""Export with proof: every format written, each file checked against eager PyTorch, and the
reference I/O saved beside them. `torchship export`, the pruned model's export and the
pipeline's export step all go through here."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

from torchship.artifact import Artifact
from torchship.exporter.base import ExportOptions, export_model
from torchship.exporter.parity import require_parity
from torchship.exporter.reference import save_references
from torchship.loaded import LoadedModel
from torchship.runtimes.compare import ParityReport

__all__ = ["export_checked"]


def export_checked(
    model: LoadedModel,
    out_dir: Path,
    *,
    formats: Sequence[str],
    options: ExportOptions | None = None,
    export_from: LoadedModel | None = None,
    progress: Callable[[str], None] | None = None,
) -> tuple[list[Artifact], dict[str, ParityReport]]:
    """Export `export_from` (default `model`) to `out_dir` and prove every file against eager
    `model`; ParityError on the first mismatch. Returns the artifacts and their reports by file
    name."""
    step = progress or (lambda message: None)
    artifacts = export_model(export_from or model, out_dir, formats=formats, options=options)
    reports = {}
    for artifact in artifacts:
        step(f"checking {artifact.path.name} against eager PyTorch")
        reports[artifact.path.name] = require_parity(model, artifact)
    save_references(model, out_dir)
    return artifacts, reports
