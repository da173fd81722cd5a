"""`manifest.json`: what an output directory holds and how it was made (docs/design.md)."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Sequence
from pathlib import Path

from torchship.artifact import Artifact
from torchship.errors import ModelLoadError, first_line
from torchship.files import atomic_write_json, sha256_file
from torchship.fingerprint import machine_fingerprint, software_fingerprint
from torchship.loaded import LoadedModel

__all__ = ["MANIFEST_NAME", "SCHEMA", "build_manifest", "write_manifest", "read_manifest"]

MANIFEST_NAME = "manifest.json"
SCHEMA = "torchship.manifest/1"
#: A manifest lists files and metrics: kilobytes. A larger file is not read into memory.
_MAX_MANIFEST_BYTES = 64 << 20


def _source(model: LoadedModel) -> dict:
    """The model's origin; its task when the source recorded one (read back by quantize's
    metric choice, `calibration/metrics.py::recorded_task`)."""
    source = {"model": model.source, "weights_sha256": model.weights_sha256}
    return source if model.task is None else {**source, "task": model.task}


def build_manifest(
    out_dir: Path,
    *,
    model: LoadedModel,
    artifacts: Sequence[Artifact],
    command: Sequence[str] | None = None,
    metrics: dict | None = None,
    gates: dict | None = None,
    extra: dict | None = None,
) -> dict:
    """Describe every file in `out_dir` and the run that made it. Only `out_dir`'s own manifest
    is left out: the steps' manifests in subfolders (int8/, pruned/) are part of the output."""
    files = [
        {
            "path": p.relative_to(out_dir).as_posix(),
            "sha256": sha256_file(p),
            "size_bytes": p.stat().st_size,
        }
        for p in sorted(out_dir.rglob("*"))
        if p.is_file() and p != out_dir / MANIFEST_NAME and not p.name.startswith(".")
    ]
    return {
        "schema": SCHEMA,
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "source": _source(model),
        "inputs": [s.to_dict() for s in model.inputs],
        "outputs": list(model.outputs),
        "files": files,
        "artifacts": [_artifact_entry(a, out_dir) for a in artifacts],
        "metrics": metrics or {},
        "gates": gates or {},
        "command": list(command) if command is not None else None,
        "software": software_fingerprint(),
        "machine": machine_fingerprint(),
        **(extra or {}),
    }


def _artifact_entry(artifact: Artifact, out_dir: Path) -> dict:
    """The artifact's description, its path relative to `out_dir` (int8/model.int8.onnx)."""
    entry = artifact.to_dict()
    if artifact.path.is_relative_to(out_dir):
        entry["path"] = artifact.path.relative_to(out_dir).as_posix()
    return entry


def write_manifest(out_dir: Path, manifest: dict) -> Path:
    path = Path(out_dir) / MANIFEST_NAME
    atomic_write_json(path, manifest)
    return path


def read_manifest(out_dir: Path) -> dict:
    path = Path(out_dir) / MANIFEST_NAME
    try:
        if path.stat().st_size > _MAX_MANIFEST_BYTES:
            raise ModelLoadError(
                f"{path}: {path.stat().st_size} bytes is not a manifest (they are kilobytes; "
                f"at most {_MAX_MANIFEST_BYTES} are read)"
            )
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ModelLoadError(f"{path}: no such file") from None
    except ValueError as exc:  # UnicodeDecodeError too
        raise ModelLoadError(f"{path}: not valid JSON: {first_line(exc)}") from None
    except RecursionError:
        raise ModelLoadError(f"{path}: not a manifest: JSON nested too deeply") from None
    except OSError as exc:
        raise ModelLoadError(f"{path}: cannot read it ({exc.strerror})") from None
