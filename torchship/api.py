"""The Python API; the CLI is a thin layer over these functions."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from torchship.artifact import FILE_FORMATS, Artifact, Format
from torchship.errors import ConfigError
from torchship.exporter import ExportOptions
from torchship.exporter.checked import export_checked
from torchship.loaded import LoadedModel
from torchship.manifest import build_manifest, write_manifest
from torchship.runtimes import (
    BenchConfig,
    BenchDocument,
    bench_document,
    bench_runner,
    default_runtime_for,
    get_runner,
    require_available,
)
from torchship.sources import load_model
from torchship.specs import InputSpec
from torchship.staging import staged_output

__all__ = ["ExportResult", "export", "bench", "fixed_batch", "open_artifacts"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ExportResult:
    out_dir: Path
    model: LoadedModel
    artifacts: tuple[Artifact, ...]
    parity: dict  # artifact file name -> ParityReport
    manifest_path: Path


def export(
    source: str | LoadedModel,
    out_dir: str | Path,
    *,
    formats: Sequence[str] | None = None,
    inputs: Sequence[InputSpec] | None = None,
    weights: str | Path | None = None,
    trust_pickle: bool = False,
    options=None,
    command: Sequence[str] | None = None,
    task: str | None = None,
    config: str | None = None,
) -> ExportResult:
    """Export `source` to each format, check every artifact against eager PyTorch, write a manifest.

    Nothing is left in `out_dir` unless every artifact passed: a ParityError (exit 1) or any other
    failure removes the staged files.
    """
    model = (
        source
        if isinstance(source, LoadedModel)
        else load_model(
            source,
            inputs=inputs,
            weights=weights,
            trust_pickle=trust_pickle,
            task=task,
            config=config,
        )
    )
    names = list(formats) if formats else list(FILE_FORMATS)
    for name in names:
        Format.parse(name)
    options = options or ExportOptions()
    keep = [model.source, *([weights] if weights is not None else [])]
    with staged_output(out_dir, keep=keep) as stage:
        artifacts, reports = export_checked(model, stage, formats=names, options=options)
        manifest = build_manifest(
            stage,
            model=model,
            artifacts=artifacts,
            command=command,
            metrics={"parity": {k: r.to_dict() for k, r in reports.items()}},
        )
        write_manifest(stage, manifest)
    final = Path(out_dir)
    moved = tuple(replace(a, path=final / a.path.name) for a in artifacts)
    return ExportResult(final, model, moved, reports, final / "manifest.json")


def fixed_batch(artifact: Artifact) -> tuple[int] | None:
    """(B,) when every input of `artifact` has a fixed axis 0 of the same size B, else None."""
    sizes = {s.shape[0] for s in artifact.inputs if s.shape and 0 not in s.dynamic}
    if (
        not artifact.inputs
        or len(sizes) != 1
        or any(not s.shape or 0 in s.dynamic for s in artifact.inputs)
    ):
        return None
    return (sizes.pop(),)


def open_artifacts(
    paths: Sequence[str | Path], *, inputs: Sequence[InputSpec] | None = None
) -> list[Artifact]:
    return [Artifact.open(p, inputs=inputs) for p in paths]


def bench(
    artifacts: Sequence[Artifact | str | Path],
    *,
    runtimes: Sequence[str] | None = None,
    config: BenchConfig | None = None,
    inputs: Sequence[InputSpec] | None = None,
    progress: Callable[[str], None] | None = None,
    model_batch: bool = False,
) -> BenchDocument:
    """Benchmark each artifact on each runtime (default: the artifact format's runtime).

    Returns the `torchship.bench/1` document (docs/design.md, "Bench result"); `to_dict()` is
    its JSON. `progress(message)` hears which artifact, runtime and batch is being timed.
    With `model_batch` (no batch was asked for), an artifact whose inputs fix axis 0 is timed
    at that batch rather than at `config.batches`.
    """
    config = config or BenchConfig()
    opened = [a if isinstance(a, Artifact) else Artifact.open(a, inputs=inputs) for a in artifacts]
    plan = []
    for artifact in opened:
        names = runtimes or [default_runtime_for(artifact.format)]
        for name in names:
            cls = get_runner(name)
            if artifact.format not in cls.formats:
                if runtimes and len(opened) > 1:
                    continue  # a runtime list applies to the artifacts each runtime can run
            require_available(name)
            plan.append((name, artifact))
    if not plan:
        raise ConfigError("no artifact can run on the runtimes given")
    step = progress or (lambda message: None)
    results = []
    for name, artifact in plan:
        for batch in (fixed_batch(artifact) or config.batches) if model_batch else config.batches:
            step(f"timing {artifact.path.name} on {name}, batch {batch}")
            results.append(bench_runner(name, artifact, config=config, batch=batch))
    return bench_document(results)
