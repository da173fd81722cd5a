"""Resource faults at the write layer: a full disk, a read-only or forbidden folder.

An output that cannot be written is bad input (exit 2), not a failed check: the message names
the output, the reason and the file, and the staged files are gone (torchship.files,
torchship.staging). Libraries do not always say why a write failed (torch.save raises
"RuntimeError: ... file write failed" on a full disk), so a failure on a file system left with
(almost) no free space is reported as a full disk too; deliberate check failures (parity,
accuracy, gates) never are.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

from torchship.errors import CheckFailedError, OutputError

__all__ = ["check_writable", "output_error", "fault_reason"]

#: errno values that always mean "this output cannot be written here".
_WRITE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EFBIG})
_PERMISSION_ERRNOS = frozenset({errno.EACCES, errno.EPERM})
#: Below this many free bytes a failed write is taken for a full disk.
_LOW_SPACE = 1 << 20


def check_writable(folder: Path, *, target: Path) -> None:
    """OutputError, before any work, when `folder` (or the nearest folder above it that exists,
    which would receive it) cannot be written."""
    existing = Path(os.path.abspath(folder))
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir() or os.access(existing, os.W_OK | os.X_OK):
        return  # a file in the way is reported by the caller, which knows the flag
    reason = "is on a read-only file system" if _read_only(existing) else "is not writable"
    raise OutputError(f"{target}: cannot write the output: {existing} {reason}")


def output_error(
    target: Path,
    exc: BaseException,
    *,
    where: Path,
    stage: Path | None = None,
    file: Path | None = None,
) -> OutputError | None:
    """An OutputError for `target` when `exc` is a resource fault writing in `where`, else None.

    `stage` is the staging folder: a file named in the error is shown at its place in the
    output. `file` is the file being written, named when the OSError names none (a failed
    `write()` does not).
    """
    if isinstance(exc, CheckFailedError | KeyboardInterrupt | SystemExit):
        return None
    # an OutputError from a file inside the stage is named again, at its place in the output
    fault = fault_reason(exc, where=where, guess=not isinstance(exc, OutputError))
    if fault is None:
        return None
    reason, name = fault
    name = name or getattr(exc, "path", None) or file
    shown = f" ({_shown(name, stage, target)})" if name is not None else ""
    error = OutputError(
        f"{target}: cannot write the output: {reason}{shown}; nothing of this run was kept"
    )
    error.path = name
    return error


def fault_reason(
    exc: BaseException, *, where: Path, guess: bool = True
) -> tuple[str, object] | None:
    """(why, the file named) when `exc` is a resource fault writing in `where`, else None.
    `guess`: a failure on a file system with almost no space left counts as one too."""
    for error in _chain(exc):
        if not isinstance(error, OSError) or error.errno is None:
            continue
        inside = error.filename is not None and _is_within(error.filename, where)
        if error.errno in _WRITE_ERRNOS or (error.errno in _PERMISSION_ERRNOS and inside):
            return os.strerror(error.errno), error.filename
    free = _free_bytes(where) if guess else None
    if free is not None and free < _LOW_SPACE:
        return f"No space left on device ({free} bytes free in {where})", None
    return None


def _chain(exc: BaseException):
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def _is_within(filename: object, folder: Path) -> bool:
    try:
        return Path(os.path.abspath(os.fsdecode(filename))).is_relative_to(os.path.abspath(folder))
    except (TypeError, ValueError):
        return False


def _shown(filename: object, stage: Path | None, target: Path | None) -> str:
    """A staged file's name as the user knows it: at its place in the output."""
    path = Path(os.fsdecode(filename))
    if stage is not None and target is not None and _is_within(path, stage):
        return str(target / Path(os.path.abspath(path)).relative_to(os.path.abspath(stage)))
    return str(path)


def _free_bytes(folder: Path) -> int | None:
    try:
        stat = os.statvfs(folder)
    except (OSError, AttributeError):
        return None
    if stat.f_files and stat.f_favail == 0:
        return 0  # no inodes left: nothing more can be created
    return stat.f_bavail * stat.f_frsize


def _read_only(folder: Path) -> bool:
    try:
        return bool(os.statvfs(folder).f_flag & os.ST_RDONLY)
    except (OSError, AttributeError):
        return False
