"""`torchship verify BUNDLE`: prove a bundle is what its manifest says it is.

Three checks, in order: every file listed in `manifest.json` exists with its size and sha256; no
file was added beside them; every artifact loads in its runtime and reproduces the stored
reference outputs (`reference_inputs.json` / `reference_outputs.json`) within the tolerance
profile of its precision.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from torchship.artifact import Artifact, Format, Precision
from torchship.errors import BackendUnavailableError, CheckFailedError, ConfigError
from torchship.exporter.reference import INPUTS_FILE, load_reference
from torchship.files import sha256_file
from torchship.interrupts import reraise_interrupt
from torchship.locks import INSIDE_LOCK_NAME, output_lock
from torchship.manifest import MANIFEST_NAME, read_manifest
from torchship.runtimes.base import default_runtime_for, get_runner
from torchship.runtimes.compare import OutputComparison, compare_runs
from torchship.runtimes.tolerance import tolerance_for
from torchship.specs import InputSpec

__all__ = ["VerifyCheck", "VerifyReport", "verify_bundle", "require_verified"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class VerifyCheck:
    """One check on one file: `status` is "ok", "failed" or "skipped"."""

    path: str
    check: str
    status: str
    detail: str = ""

    def to_dict(self) -> dict:
        return {
            "path": self.path,
            "check": self.check,
            "status": self.status,
            "detail": self.detail,
        }


@dataclass
class VerifyReport:
    bundle: Path
    checks: list[VerifyCheck] = field(default_factory=list)

    @property
    def failures(self) -> list[VerifyCheck]:
        return [c for c in self.checks if c.status == "failed"]

    @property
    def passed(self) -> bool:
        return not self.failures

    def message(self) -> str:
        if self.passed:
            counted = sum(1 for c in self.checks if c.status == "ok")
            return f"{self.bundle}: verified ({counted} checks passed)"
        first = self.failures[0]
        return f"{self.bundle}/{first.path}: {first.check} failed: {first.detail}"

    def to_dict(self) -> dict:
        return {
            "bundle": str(self.bundle),
            "passed": self.passed,
            "checks": [c.to_dict() for c in self.checks],
        }


def verify_bundle(bundle: str | Path) -> VerifyReport:
    """Run every check and collect the results; raises only when there is no manifest.

    It reads holding the bundle's shared lock (torchship.locks): while a command writes the
    bundle, verify waits for it, and never sees a bundle half-replaced.
    """
    bundle = Path(bundle)
    if not bundle.is_dir():
        raise ConfigError(f"{bundle}: not a directory (expected a bundle with {MANIFEST_NAME})")
    with output_lock(bundle, shared=True):
        manifest = read_manifest(bundle)
        _check_manifest(bundle, manifest)
        report = VerifyReport(bundle)
        report.checks += _hash_checks(bundle, manifest)
        if report.passed:  # reloading tampered files proves nothing more
            report.checks += _parity_checks(bundle, manifest)
    return report


def require_verified(bundle: str | Path) -> VerifyReport:
    """`verify_bundle`, raising CheckFailedError naming the first bad file."""
    report = verify_bundle(bundle)
    if not report.passed:
        raise CheckFailedError(report.message())
    return report


def _check_manifest(bundle: Path, manifest: object) -> None:
    """ConfigError naming the part of a manifest that is not the shape verify reads."""
    where = bundle / MANIFEST_NAME
    if not isinstance(manifest, dict):
        raise ConfigError(f"{where}: must hold a JSON object, found {type(manifest).__name__}")
    for key, required in (("files", True), ("artifacts", False)):
        entries = manifest.get(key, None if required else [])
        if not isinstance(entries, list):
            raise ConfigError(f"{where}: {key!r} must be a list")
        for index, entry in enumerate(entries):
            if not isinstance(entry, dict):
                found = type(entry).__name__
                raise ConfigError(f"{where}: {key}[{index}] must be an object, found {found}")


def _hash_checks(bundle: Path, manifest: dict) -> list[VerifyCheck]:
    entries = manifest["files"]
    checks = [_hash_check(bundle, entry) for entry in entries]
    listed = _paths(entries)
    # hidden files too: torchship never writes one into a bundle, so one there was added
    for path in sorted(bundle.rglob("*")):
        rel = path.relative_to(bundle).as_posix()
        if rel == INSIDE_LOCK_NAME:
            continue  # the lock of a bundle whose parent folder is read-only
        if path.is_symlink() and rel not in listed:
            checks.append(VerifyCheck(rel, "listed", "failed", "a symbolic link (added)"))
        elif path.is_file() and rel != MANIFEST_NAME and rel not in listed:
            checks.append(VerifyCheck(rel, "listed", "failed", "not listed in the manifest"))
    return checks


def _hash_check(bundle: Path, entry: dict) -> VerifyCheck:
    rel = entry.get("path")
    problem = _path_problem(bundle, rel)
    if problem:
        return VerifyCheck(_kind(rel).strip("'"), "sha256", "failed", problem)
    path = bundle / rel
    if not path.is_file():
        return VerifyCheck(rel, "sha256", "failed", "missing (deleted)")
    size = path.stat().st_size
    if size != entry.get("size_bytes"):
        detail = f"size {size} bytes, manifest says {entry.get('size_bytes')} (tampered)"
        return VerifyCheck(rel, "sha256", "failed", detail)
    digest = sha256_file(path)
    if digest != entry.get("sha256"):
        detail = f"sha256 {digest[:12]}…, manifest says {str(entry.get('sha256'))[:12]}… (tampered)"
        return VerifyCheck(rel, "sha256", "failed", detail)
    return VerifyCheck(rel, "sha256", "ok")


def _path_problem(bundle: Path, rel: object) -> str | None:
    """Why a manifest path cannot name a file of this bundle, None when it can."""
    if not isinstance(rel, str) or not rel or "\0" in rel:
        return f"path must be a file name inside the bundle, found {_kind(rel)}"
    if Path(rel).is_absolute() or ".." in Path(rel).parts:
        return "path leaves the bundle"
    path = bundle / rel
    try:
        inside = path.resolve().is_relative_to(bundle.resolve())
        link = any(p.is_symlink() for p in [path, *path.parents] if _below(p, bundle))
    except (OSError, RuntimeError, ValueError) as exc:  # too long, a symlink loop
        return f"path cannot be read: {type(exc).__name__}"
    if not inside:
        return "path leaves the bundle"
    if link:
        return "a symbolic link (torchship writes none)"
    return None


def _paths(entries: list[dict]) -> set[str]:
    return {p for e in entries if isinstance(p := e.get("path"), str)}


def _below(path: Path, bundle: Path) -> bool:
    return path != bundle and path.is_relative_to(bundle)


def _kind(value: object) -> str:
    return repr(value)[:60] if isinstance(value, str) else type(value).__name__


def _parity_checks(bundle: Path, manifest: dict) -> list[VerifyCheck]:
    entries = [a for a in manifest.get("artifacts", []) if a.get("format") != Format.EAGER.value]
    hashed = _paths(manifest["files"])
    references: dict[Path, tuple] = {}
    checks = []
    for entry in entries:
        rel = entry.get("path")
        if not isinstance(rel, str) or rel not in hashed:  # only files just hashed are run
            detail = "not in the manifest's files (its hash is unchecked)"
            checks.append(VerifyCheck(_kind(rel).strip("'"), "parity", "failed", detail))
            continue
        folder = _reference_dir(bundle, bundle / str(entry.get("path")))
        if folder not in references:
            references[folder] = load_reference(folder)
        checks.append(_artifact_check(bundle, entry, *references[folder]))
    return checks


def _reference_dir(bundle: Path, artifact_path: Path) -> Path:
    """The artifact's own reference I/O when it has one (quantized artifacts), else the bundle's."""
    own = artifact_path.parent
    return own if (own / INPUTS_FILE).is_file() else bundle


def _artifact_check(bundle: Path, entry: dict, feeds_list, outputs_list) -> VerifyCheck:
    rel = str(entry.get("path"))
    try:
        artifact = _artifact_from_entry(bundle / rel, entry)
        runtime = entry.get("runtime") or default_runtime_for(artifact.format)
        cls = get_runner(runtime)
        reason = cls.unavailable_reason()
        if reason is not None:
            return VerifyCheck(rel, "parity", "skipped", f"runtime {runtime} unavailable: {reason}")
        pairs = enumerate(zip(feeds_list, outputs_list, strict=True))
        cases = ((f"reference #{i}", feeds, expected) for i, (feeds, expected) in pairs)
        profile = tolerance_for(artifact.precision.value)
        with cls(artifact) as runner:
            report = compare_runs(runner, cases, profile=profile, fail_fast=True)
        if not report.passed:
            problem = _mismatch(report.failures[0], artifact.precision.value)
            return VerifyCheck(rel, "parity", "failed", problem)
    except BackendUnavailableError as exc:
        return VerifyCheck(rel, "parity", "skipped", str(exc))
    except Exception as exc:  # a swapped file may not even load: that is a failed check
        reraise_interrupt(exc)
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        return VerifyCheck(rel, "parity", "failed", f"cannot run it: {first}")
    return VerifyCheck(rel, "parity", "ok", f"{len(feeds_list)} reference cases on {runtime}")


def _artifact_from_entry(path: Path, entry: dict) -> Artifact:
    return Artifact.create(
        path,
        format=Format(entry["format"]),
        inputs=[InputSpec.from_dict(d) for d in entry.get("inputs", [])],
        outputs=list(entry.get("outputs", [])),
        precision=Precision(entry.get("precision", "fp32")),
    )


def _mismatch(c: OutputComparison, profile: str) -> str:
    if c.missing:
        return f"output {c.output!r} missing on {c.case}; the artifact returned {list(c.returned)}"
    if c.shape_mismatch:
        shapes = f"shape {list(c.actual_shape or ())}, stored {list(c.shape)}"
        return f"output {c.output!r} on {c.case}: {shapes}"
    return (
        f"output {c.output!r} on {c.case}: max abs err {c.max_abs:.3g}, cosine "
        f"{c.cosine:.6g} (profile {profile}) — does not match the stored reference outputs"
    )
