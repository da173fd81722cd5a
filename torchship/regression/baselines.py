"""Stored latency baselines: bench documents filed by name under a machine + software fingerprint.

Layout: `<root>/<fingerprint>/<NAME>.json`. The root is `$TORCHSHIP_BASELINES` or
`.torchship/baselines` (relative to the working directory) unless a path is given. Baselines are
only comparable on the fingerprint that made them; reading one made elsewhere warns, or refuses
when `strict`.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path

from torchship.errors import ConfigError
from torchship.files import atomic_write_json
from torchship.fingerprint import fingerprint_key, machine_fingerprint, software_fingerprint
from torchship.runtimes.bench import BenchDocument, load_bench_document

__all__ = [
    "DEFAULT_ROOT",
    "ENV_VAR",
    "baseline_root",
    "save_baseline",
    "find_baseline",
    "load_baseline",
    "current_fingerprint",
]

log = logging.getLogger(__name__)

ENV_VAR = "TORCHSHIP_BASELINES"
DEFAULT_ROOT = Path(".torchship") / "baselines"
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")
#: what `fingerprint_key` writes (16 hex digits), with room to spare; never '..' or a separator
_FINGERPRINT = re.compile(r"[A-Za-z0-9_-]{1,64}")


def baseline_root(root: str | os.PathLike | None = None) -> Path:
    """The baselines directory: `root`, else $TORCHSHIP_BASELINES, else .torchship/baselines."""
    if root is not None:
        return Path(root)
    return Path(os.environ.get(ENV_VAR) or DEFAULT_ROOT)


def current_fingerprint() -> str:
    return fingerprint_key(machine_fingerprint(), software_fingerprint())


def save_baseline(
    document: BenchDocument, name: str, *, root: str | os.PathLike | None = None
) -> Path:
    """File a bench document as baseline `name` under its own fingerprint; returns the path."""
    _check_name(name)
    fingerprint = document.fingerprint
    if not isinstance(fingerprint, str) or not fingerprint:
        raise ConfigError("the bench document has no fingerprint; cannot file it as a baseline")
    _check_fingerprint(fingerprint)
    path = baseline_root(root) / fingerprint / f"{name}.json"
    atomic_write_json(path, document.to_dict())
    log.info("saved baseline %r to %s", name, path)
    return path


def find_baseline(
    name: str,
    *,
    root: str | os.PathLike | None = None,
    fingerprint: str | None = None,
    strict: bool = False,
) -> Path:
    """The file of baseline `name` for `fingerprint` (default: this machine's).

    When only another fingerprint has it: a warning (ConfigError when `strict`). When none has
    it: ConfigError listing the baselines that exist.
    """
    _check_name(name)
    base = baseline_root(root)
    fingerprint = fingerprint or current_fingerprint()
    _check_fingerprint(fingerprint)
    own = base / fingerprint / f"{name}.json"
    if own.is_file():
        return own
    others = [p for p in base.glob(f"*/{name}.json") if p.is_file()] if base.is_dir() else []
    if not others:
        known = sorted({p.stem for p in base.glob("*/*.json")}) if base.is_dir() else []
        raise ConfigError(
            f"no baseline named {name!r} under {base}; known: {', '.join(known) or 'none'} "
            "(save one with `torchship bench ... --save-baseline NAME`)"
        )
    found = max(others, key=lambda p: (p.stat().st_mtime, p.parent.name))
    which = f" (the newest of {len(others)})" if len(others) > 1 else ""
    message = (
        f"baseline {name!r} was recorded under fingerprint {found.parent.name}{which}, this "
        f"machine is {fingerprint}: another machine or software versions"
    )
    if strict:
        raise ConfigError(message + "; refusing under --strict")
    log.warning("%s; comparing anyway", message)
    return found


def load_baseline(
    name_or_path: str | os.PathLike,
    *,
    root: str | os.PathLike | None = None,
    strict: bool = False,
) -> BenchDocument:
    """A bench document from a JSON file path, or else from the stored baseline of that name."""
    path = Path(name_or_path)
    if path.suffix == ".json" or path.is_file():
        return load_bench_document(path)
    return load_bench_document(find_baseline(str(name_or_path), root=root, strict=strict))


def _check_fingerprint(fingerprint: str) -> None:
    # it becomes a folder name: refuse anything that could leave the baselines root
    if not _FINGERPRINT.fullmatch(fingerprint):
        raise ConfigError(
            f"fingerprint {fingerprint!r}: expected letters, digits, '_' or '-' (at most 64); "
            "is this a torchship bench document?"
        )


def _check_name(name: str) -> None:
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise ConfigError(
            f"baseline name {name!r}: use letters, digits, '.', '_' or '-' (at most 100), "
            "starting with a letter or digit"
        )
