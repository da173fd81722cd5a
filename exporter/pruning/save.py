"""Saving a pruned model without pickle: `.pt2` + ONNX + TorchScript, safetensors, channel plan.

BatchNorm is folded into the preceding layers for the artifacts (the `fold-batchnorm` pass);
every artifact is checked against the pruned eager model, so the check covers the fold too.
The `.pt2` loads back through `torchship.load_model("…/model.pt2")` for further export.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from torchship.artifact import FILE_FORMATS, Artifact
from torchship.exporter.checked import export_checked
from torchship.exporter.passes import run_passes
from torchship.loaded import LoadedModel
from torchship.manifest import build_manifest, write_manifest
from torchship.staging import staged_output

__all__ = ["SavedPruned", "save_pruned", "WEIGHTS_NAME"]

log = logging.getLogger(__name__)

WEIGHTS_NAME = "model.safetensors"


@dataclass(frozen=True)
class SavedPruned:
    out_dir: Path
    artifacts: tuple[Artifact, ...]
    weights: Path
    manifest_path: Path
    parity: dict


def save_pruned(
    model: LoadedModel,
    out_dir: str | Path,
    *,
    pruning: dict,
    metrics: dict | None = None,
    formats: Sequence[str] | None = None,
    fold_batchnorm: bool = True,
    options=None,
    command: Sequence[str] | None = None,
) -> SavedPruned:
    """Export `model` to `out_dir` (atomically), with weights and the plan in the manifest."""
    from safetensors.torch import save_file

    names = list(formats) if formats else list(FILE_FORMATS)
    export_from, passes = run_passes(model) if fold_batchnorm else (model, [])
    with staged_output(out_dir, keep=[model.source]) as stage:
        artifacts, reports = export_checked(
            model, stage, formats=names, options=options, export_from=export_from
        )
        parity = {name: report.to_dict() for name, report in reports.items()}
        state = {k: v.detach().contiguous().clone() for k, v in model.module.state_dict().items()}
        save_file(state, str(stage / WEIGHTS_NAME))
        manifest = build_manifest(
            stage,
            model=model,
            artifacts=artifacts,
            command=command,
            metrics={**(metrics or {}), "parity": parity},
            extra={
                "pruning": pruning,
                "passes": [{"name": p.name, "changes": list(p.changes)} for p in passes],
            },
        )
        write_manifest(stage, manifest)
    final = Path(out_dir)
    moved = tuple(replace(a, path=final / a.path.name) for a in artifacts)
    log.info("saved the pruned model to %s", final)
    return SavedPruned(final, moved, final / WEIGHTS_NAME, final / "manifest.json", parity)
