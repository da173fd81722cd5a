"""File helpers: hashing and atomic writes (temp file in the same directory + rename)."""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import os
import re
import shutil
import sys
import tempfile
import types
from collections.abc import Iterator
from pathlib import Path

from torchship.errors import ConfigError, ModelLoadError, first_line

__all__ = [
    "sha256_file",
    "atomic_path",
    "atomic_write_text",
    "atomic_write_json",
    "atomic_dir",
    "import_python_file",
]


def sha256_file(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, *, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success it is renamed onto `path`, else removed.

    ConfigError, before anything is created, when `path` is an existing directory.

    `suffix` keeps tools that look at the extension (torch.onnx, torch.export.save) happy.
    """
    target = Path(path)
    if target.is_dir():  # os.replace would fail only after the work, with IsADirectoryError
        raise ConfigError(f"{target}: is a directory; give a file path to write to")
    make_parent(target)
    fd, tmp = tempfile.mkstemp(
        prefix=f".{target.name}.", suffix=suffix or target.suffix, dir=target.parent
    )
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        tmp_path.chmod(0o666 & ~_umask())  # mkstemp makes 0600; deployments read these files
        os.replace(tmp_path, target)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


def make_parent(target: Path) -> None:
    """Create `target`'s folder; ConfigError when something in the way is a file."""
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise ConfigError(f"{target}: a parent of this path is a file, not a folder") from None
    except OSError as exc:
        raise ConfigError(f"{target}: cannot create its folder ({exc.strerror})") from None


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def atomic_write_json(path: str | os.PathLike, data: object) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=False) + "\n")


def check_replaceable_dir(target: Path) -> None:
    """ConfigError unless `target` is absent, empty, or an earlier output of ours (it holds a
    manifest.json): replacing a user's file or project folder would destroy their data."""
    if not target.exists():
        return
    if not target.is_dir():
        raise ConfigError(f"{target}: exists and is not a directory; give a new output folder")
    if any(target.iterdir()) and not (target / "manifest.json").is_file():
        raise ConfigError(
            f"{target}: an existing folder that is not a torchship output (no manifest.json); "
            "give a new or empty output folder"
        )


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary directory that replaces `path` only when the block succeeds.

    An interrupted or failed run leaves the previous directory (or nothing) in place, never a
    half-written one.
    """
    target = Path(path)
    check_replaceable_dir(target)
    make_parent(target)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        yield tmp
        _make_readable(tmp)
        if target.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old.", dir=target.parent))
            os.replace(target, old / target.name)
            os.replace(tmp, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _make_readable(root: Path) -> None:
    """mkdtemp/mkstemp create 0700/0600 entries; an output folder is read by other users."""
    mask = _umask()
    for path in [root, *root.rglob("*")]:
        if not path.is_symlink():
            path.chmod((0o777 if path.is_dir() else 0o666) & ~mask)


def import_python_file(path: Path) -> types.ModuleType:
    """Import a user's .py file as a module (model factories, data functions)."""
    if not path.is_file():
        raise ModelLoadError(f"{path}: no such file")
    name = "torchship_user_" + re.sub(r"\W", "_", str(path.resolve()))
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # lets classes defined there pickle and unpickle
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        del sys.modules[name]
        raise ModelLoadError(f"{path}: importing it failed: {first_line(exc)}") from exc
    return module
