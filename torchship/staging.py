"""Staged outputs: a folder's new files move in only when the work that writes them succeeds."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

from torchship.errors import ConfigError, OutputError
from torchship.faults import check_writable, output_error
from torchship.interrupts import deferred_interrupts, raise_if_interrupted
from torchship.locks import output_lock
from torchship.manifest import MANIFEST_NAME
from torchship.stale import MARKER_NAME, mark_staging, remove_stale

__all__ = ["staged_output"]

log = logging.getLogger(__name__)

_STAGE_PREFIX = ".torchship-staging-"


@contextlib.contextmanager
def staged_output(out_dir: str | Path, *, keep: Sequence[str | Path] = ()) -> Iterator[Path]:
    """A staging directory whose files move into `out_dir` only when the block succeeds.

    Files an earlier run listed in `out_dir`'s manifest.json and this run does not write are
    removed (they would be unlisted in the new manifest), except paths in `keep`; other files
    already in `out_dir` are left alone. The manifest is moved last so a directory with a
    manifest is always complete. The block runs holding `out_dir`'s lock (torchship.locks), so
    a second writer waits and `verify` never reads a folder half-updated; staging folders that
    killed runs left in `out_dir` are removed first (torchship.stale). A full disk or a folder
    that cannot be written is an OutputError (exit 2) naming the reason.
    """
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"-o {out}: exists and is not a directory")
    check_writable(out if out.exists() else Path(os.path.abspath(out)).parent, target=out)
    try:
        Path(os.path.abspath(out)).parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise _cannot_create(out, exc) from exc
    with output_lock(out):
        created = not out.exists()
        try:
            out.mkdir(parents=True, exist_ok=True)
            remove_stale(out, _STAGE_PREFIX, out)
            stage = Path(tempfile.mkdtemp(prefix=_STAGE_PREFIX, dir=out))
        except OSError as exc:
            if created:
                shutil.rmtree(out, ignore_errors=True)
            raise _cannot_create(out, exc) from exc
        try:
            mark_staging(stage, out)
            yield stage
            raise_if_interrupted()  # a library swallowed a signal: do not ship its work
            with deferred_interrupts():
                _move_in(stage, out, keep)
        except BaseException as exc:
            error = output_error(out, exc, where=out, stage=stage)
            if created:
                shutil.rmtree(out, ignore_errors=True)
            if error is not None:
                raise error from exc
            raise
        finally:
            shutil.rmtree(stage, ignore_errors=True)


def _cannot_create(out: Path, exc: OSError) -> OutputError:
    reason = exc.strerror or type(exc).__name__
    return OutputError(f"-o {out}: cannot create the output folder: {reason}")


def _move_in(stage: Path, out: Path, keep: Sequence[str | Path]) -> None:
    previous = _listed_files(out)
    entries = sorted(
        (e for e in stage.iterdir() if e.name != MARKER_NAME),
        key=lambda p: p.name == MANIFEST_NAME,
    )
    for entry in entries:
        if entry.name == MANIFEST_NAME:
            _remove_stale(out, previous, {e.name for e in entries}, keep)
        target = out / entry.name
        if target.is_dir() and not entry.is_dir():
            raise ConfigError(f"{target}: a directory is in the way of an output file")
        if target.is_dir():
            shutil.rmtree(target)
        os.replace(entry, target)


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
