"""The Python API; the CLI is a thin layer over these functions."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from torchship.artifact import FILE_FORMATS, Artifact, Format
from torchship.errors import ConfigError
from torchship.loaded import LoadedModel
from torchship.manifest import MANIFEST_NAME, build_manifest, write_manifest
from torchship.sources import load_model
from torchship.specs import InputSpec, random_feeds

__all__ = ["ExportResult", "export", "bench", "open_artifacts", "staged_output", "save_references"]

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
) -> ExportResult:
    """Export `source` to each format, check every artifact against eager PyTorch, write a manifest.

    Nothing is left in `out_dir` unless every artifact passed: a ParityError (exit 1) or any other
    failure removes the staged files.
    """
    from torchship.exporter import ExportOptions, export_model, require_parity

    model = (
        source
        if isinstance(source, LoadedModel)
        else load_model(source, inputs=inputs, weights=weights, trust_pickle=trust_pickle)
    )
    names = list(formats) if formats else list(FILE_FORMATS)
    for name in names:
        Format.parse(name)
    options = options or ExportOptions()
    keep = [model.source, *([weights] if weights is not None else [])]
    with staged_output(out_dir, keep=keep) as stage:
        artifacts = export_model(model, stage, formats=names, options=options)
        reports = {a.path.name: require_parity(model, a) for a in artifacts}
        save_references(model, stage)
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


def save_references(model: LoadedModel, out_dir: Path, *, num_random: int = 2) -> None:
    """Reference I/O (example + random inputs, eager outputs) in polygraphy's JSON format."""
    from torchship.exporter import save_reference

    feeds = [model.example] + [random_feeds(model.inputs, seed=100 + i) for i in range(num_random)]
    save_reference(out_dir, feeds_list=feeds, outputs_list=[model.run(f) for f in feeds])


def save_own_references(artifacts: Sequence[Artifact], reference_dir: Path) -> None:
    """Reference outputs of each artifact (INT8, engines), from its own runtime, in its folder.

    The inputs are `reference_dir`'s. INT8 outputs on random inputs are far from eager (accuracy
    is judged on real data); what `torchship verify` must prove is that the shipped file still
    computes what was shipped.
    """
    from torchship.exporter import load_reference, save_reference
    from torchship.runtimes import default_runtime_for, get_runner

    feeds_list, _ = load_reference(reference_dir)
    for artifact in artifacts:
        with get_runner(default_runtime_for(artifact.format))(artifact) as runner:
            outputs = [runner.infer(feeds) for feeds in feeds_list]
        save_reference(artifact.path.parent, feeds_list=feeds_list, outputs_list=outputs)


@contextlib.contextmanager
def staged_output(out_dir: str | Path, *, keep: Sequence[str | Path] = ()) -> Iterator[Path]:
    """A staging directory whose files move into `out_dir` only when the block succeeds.

    Files an earlier run listed in `out_dir`'s manifest.json and this run does not write are
    removed (they would be unlisted in the new manifest), except paths in `keep`; other files
    already in `out_dir` are left alone. The manifest is moved last so a directory with a
    manifest is always complete.
    """
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"-o {out}: exists and is not a directory")
    created = not out.exists()
    try:
        out.mkdir(parents=True, exist_ok=True)
        stage = Path(tempfile.mkdtemp(prefix=".torchship-staging-", dir=out))
    except OSError as exc:
        if created:
            shutil.rmtree(out, ignore_errors=True)
        reason = exc.strerror or type(exc).__name__
        raise ConfigError(f"-o {out}: cannot create the output folder: {reason}") from exc
    try:
        yield stage
        previous = _listed_files(out)
        entries = sorted(stage.iterdir(), key=lambda p: p.name == MANIFEST_NAME)
        for entry in entries:
            if entry.name == MANIFEST_NAME:
                _remove_stale(out, previous, {e.name for e in entries}, keep)
            target = out / entry.name
            if target.is_dir() and not entry.is_dir():
                raise ConfigError(f"{target}: a directory is in the way of an output file")
            if target.is_dir():
                shutil.rmtree(target)
            os.replace(entry, target)
    except BaseException:
        if created:
            shutil.rmtree(out, ignore_errors=True)
        raise
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def _listed_files(out: Path) -> set[str]:
    """Relative paths of the files (and artifacts) `out`'s current manifest lists."""
    try:
        manifest = json.loads((out / MANIFEST_NAME).read_text())
    except (OSError, ValueError):
        return set()
    if not isinstance(manifest, dict):
        return set()
    listed = set()
    for key in ("files", "artifacts"):
        entries = manifest.get(key)
        for entry in entries if isinstance(entries, list) else []:
            if isinstance(entry, dict) and isinstance(entry.get("path"), str):
                listed.add(entry["path"])
    return listed


def _remove_stale(
    out: Path, listed: set[str], written: set[str], keep: Sequence[str | Path]
) -> None:
    """Remove the files of an earlier run's manifest that this run does not write again."""
    root = out.resolve()
    kept = {Path(k).resolve() for k in keep}
    for rel in sorted(listed):
        parts = Path(rel).parts
        path = (out / rel).resolve()
        if not parts or parts[0] in written or path in kept:
            continue
        if not path.is_relative_to(root) or path == root or not path.is_file():
            continue  # never outside the output folder; a manifest is not trusted that far
        log.info("removing %s: the previous manifest lists it, this run does not write it", path)
        with contextlib.suppress(OSError):
            path.unlink()
            for parent in path.parents:
                if parent == root:
                    break
                parent.rmdir()  # only while empty: OSError (suppressed) stops it


def open_artifacts(
    paths: Sequence[str | Path], *, inputs: Sequence[InputSpec] | None = None
) -> list[Artifact]:
    return [Artifact.open(p, inputs=inputs) for p in paths]


def bench(
    artifacts: Sequence[Artifact | str | Path],
    *,
    runtimes: Sequence[str] | None = None,
    config=None,
    inputs: Sequence[InputSpec] | None = None,
    progress=None,
) -> dict:
    """Benchmark each artifact on each runtime (default: the artifact format's runtime).

    Returns the `torchship.bench/1` document (see DESIGN.md).
    """
    from torchship.runtimes import BenchConfig, bench_document, bench_runner, default_runtime_for
    from torchship.runtimes.base import get_runner, require_available

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
        for batch in config.batches:
            step(f"timing {artifact.path.name} on {name}, batch {batch}")
            results.append(bench_runner(name, artifact, config=config, batch=batch))
    return bench_document(results)
