"""File helpers: hashing and atomic writes (temp file in the same directory + rename)."""

from __future__ import annotations

import contextlib
import ctypes
import errno
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

from torchship.errors import ConfigError, ModelLoadError, OutputError, first_line
from torchship.faults import check_writable, output_error
from torchship.interrupts import deferred_interrupts, raise_if_interrupted
from torchship.locks import output_lock
from torchship.stale import mark_staging, remove_stale, unmark_staging

__all__ = [
    "sha256_file",
    "atomic_path",
    "atomic_write_text",
    "atomic_write_json",
    "atomic_dir",
    "scratch_cwd",
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

    ConfigError, before anything is created, when `path` is an existing directory; OutputError
    when the file cannot be written there (a full disk, a read-only folder).

    `suffix` keeps tools that look at the extension (torch.onnx, torch.export.save) happy.
    """
    target = Path(path)
    if target.is_dir():  # os.replace would fail only after the work, with IsADirectoryError
        raise ConfigError(f"{target}: is a directory; give a file path to write to")
    make_parent(target)
    try:
        fd, tmp = tempfile.mkstemp(
            prefix=f".{target.name}.", suffix=suffix or target.suffix, dir=target.parent
        )
    except OSError as exc:
        raise _cannot_write(target, exc) from exc
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        tmp_path.chmod(0o666 & ~_umask())  # mkstemp makes 0600; deployments read these files
        os.replace(tmp_path, target)
    except BaseException as exc:
        error = output_error(target, exc, where=target.parent, file=target)
        tmp_path.unlink(missing_ok=True)
        if error is not None:
            raise error from exc
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
    manifest.json): replacing a user's file or project folder would destroy their data.
    OutputError when its folder cannot be written (read-only, no permission)."""
    if target.exists() and not target.is_dir():
        raise ConfigError(f"{target}: exists and is not a directory; give a new output folder")
    if target.exists() and any(target.iterdir()) and not (target / "manifest.json").is_file():
        raise ConfigError(
            f"{target}: an existing folder that is not a torchship output (no manifest.json); "
            "give a new or empty output folder"
        )
    check_writable(Path(os.path.abspath(target)).parent, target=target)


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary directory that replaces `path` only when the block succeeds.

    An interrupted or failed run leaves the previous directory (or nothing) in place, never a
    half-written one. The block runs holding `path`'s lock (torchship.locks: a second writer
    waits); staging folders that killed runs left beside `path` are removed first
    (torchship.stale). The new folder is swapped in with one atomic exchange where the system
    has one (Linux renameat2), so a reader sees the old folder or the new one, never neither.
    """
    target = Path(path)
    check_replaceable_dir(target)
    make_parent(target)
    with output_lock(target):
        check_replaceable_dir(target)  # again: a writer we waited for may have made it
        remove_stale(target.parent, f".{target.name}.", target)
        tmp = _new_stage(target, prefix=f".{target.name}.", parent=target.parent)
        try:
            yield tmp
            raise_if_interrupted()  # a library swallowed a signal: do not ship its work
            with deferred_interrupts():
                unmark_staging(tmp)
                _make_readable(tmp)
                _swap_in(tmp, target)
        except BaseException as exc:
            error = output_error(target, exc, where=target.parent, stage=tmp)
            shutil.rmtree(tmp, ignore_errors=True)
            if error is not None:
                raise error from exc
            raise


def _new_stage(target: Path, *, prefix: str, parent: Path) -> Path:
    """A marked staging folder for `target` in `parent`; OutputError when it cannot be made."""
    try:
        stage = Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
    except OSError as exc:
        raise _cannot_write(target, exc) from exc
    try:
        mark_staging(stage, target)
    except OSError as exc:
        shutil.rmtree(stage, ignore_errors=True)
        raise _cannot_write(target, exc) from exc
    return stage


def _cannot_write(target: Path, exc: OSError) -> OutputError:
    where = f" ({exc.filename})" if exc.filename else ""
    return OutputError(f"{target}: cannot write the output: {exc.strerror or exc}{where}")


def _swap_in(stage: Path, target: Path) -> None:
    """Put the finished `stage` at `target`, removing the folder that was there."""
    if not target.exists():
        os.replace(stage, target)
    elif _exchange(stage, target):  # `stage` now holds the previous folder
        mark_staging(stage, target)  # so that a kill during the removal leaves it recognisable
        shutil.rmtree(stage, ignore_errors=True)
    else:
        old = _new_stage(target, prefix=f".{target.name}.old.", parent=target.parent)
        os.replace(target, old / target.name)
        try:
            os.replace(stage, target)
        except BaseException:
            os.replace(old / target.name, target)  # put the previous folder back
            raise
        shutil.rmtree(old, ignore_errors=True)


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths atomically (Linux renameat2 RENAME_EXCHANGE); False where unsupported."""
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p] * 2 + [ctypes.c_uint]
    at_fdcwd, rename_exchange = -100, 2
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
        return False  # the kernel or this file system cannot exchange: rename twice
    raise OSError(code, os.strerror(code), str(b))


def _make_readable(root: Path) -> None:
    """mkdtemp/mkstemp create 0700/0600 entries; an output folder is read by other users."""
    mask = _umask()
    for path in [root, *root.rglob("*")]:
        if not path.is_symlink():
            path.chmod((0o777 if path.is_dir() else 0o666) & ~mask)


@contextlib.contextmanager
def scratch_cwd(prefix: str) -> Iterator[Path]:
    """Run the block in a new temporary working directory, removed afterwards: for library
    calls that write scratch files into the current directory. (The working directory is the
    process's: use it around calls that give absolute paths.)"""
    previous = os.getcwd()
    with tempfile.TemporaryDirectory(prefix=prefix) as folder:
        os.chdir(folder)
        try:
            yield Path(folder)
        finally:
            os.chdir(previous)


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
