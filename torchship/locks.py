"""Output locks: one writer per output folder at a time, and readers only between writers.

Every command that writes an output folder (`ship`, `ship pipeline.toml`, `export`, `quantize`,
`prune`, `build-engine`) holds an exclusive `fcntl.flock` on a lock file for as long as it
writes; `verify` holds a shared one while it reads, so it never sees a folder half-replaced.
A second writer **waits** for the first to finish (logging "in use by PID N" once), so two CI
jobs writing the same folder both succeed, one after the other. `TORCHSHIP_LOCK_TIMEOUT=S`
bounds the wait: after S seconds (0: at once) it stops with exit 2, "in use by PID N".

The lock file is `.<name>.lock` beside the output folder (the folder itself is replaced by a
rename, so a lock inside it would move away); where that folder's parent cannot be written but
the folder can (`-o .` in a home folder), it is `.torchship.lock` inside the folder. It is
removed when the last holder lets go; an flock dies with its process, so a killed run never
leaves the output locked. A holder removes the file before closing it, and a waiter that gets
the lock on a file no longer at that path tries again, so two processes never both believe
they hold it (docs/design.md, "Files it writes").
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import math
import os
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from torchship.errors import ConfigError, OutputError
from torchship.stale import process_alive, process_identity

__all__ = ["LOCK_TIMEOUT_ENV", "INSIDE_LOCK_NAME", "output_lock", "lock_paths"]

log = logging.getLogger(__name__)

LOCK_TIMEOUT_ENV = "TORCHSHIP_LOCK_TIMEOUT"
#: The lock file's name inside an output folder whose parent is not writable.
INSIDE_LOCK_NAME = ".torchship.lock"
_NOT_WRITABLE = (errno.EACCES, errno.EPERM, errno.EROFS)
#: Locks this thread holds (absolute target path -> nesting depth): re-entrant within a
#: thread; two threads exclude each other like two processes (each opens its own file).
_local = threading.local()


def lock_paths(target: str | os.PathLike) -> list[Path]:
    """Where `target`'s lock file may be: beside it, else inside it (first that can be made)."""
    target = Path(os.path.abspath(target))
    return [target.parent / f".{target.name}.lock", target / INSIDE_LOCK_NAME]


@contextlib.contextmanager
def output_lock(target: str | os.PathLike, *, shared: bool = False) -> Iterator[None]:
    """Hold `target`'s lock for the block: exclusive to write it, `shared` to read it.

    Waits while another process holds a conflicting lock (see `LOCK_TIMEOUT_ENV`). A writer
    that cannot create the lock file gets a ConfigError naming it; a reader of a folder it may
    not write reads without the lock (no one can be writing there through this file system).
    """
    key = os.path.abspath(target)
    held = _local.__dict__.setdefault("held", {})
    if key in held:
        held[key] += 1
        try:
            yield
        finally:
            held[key] -= 1
        return
    fd, path = _acquire(Path(key), shared=shared)
    held[key] = 1
    try:
        yield
    finally:
        del held[key]
        if fd is not None:
            _release(fd, path, shared=shared)


def _acquire(target: Path, *, shared: bool) -> tuple[int | None, Path | None]:
    timeout = _timeout()
    started = time.monotonic()
    delay, announced = 0.05, False
    while True:
        fd, path = _open(target, shared=shared)
        if fd is None:
            return None, None
        try:
            while not _try_lock(fd, shared=shared):
                holder = _holder(fd)
                if timeout is not None and time.monotonic() - started >= timeout:
                    raise OutputError(
                        f"{target}: in use by {holder}; wait for it to finish or write to "
                        f"another folder ({LOCK_TIMEOUT_ENV}={timeout:g})"
                    )
                if not announced:
                    log.warning(
                        "%s: in use by %s; waiting for it to finish (%s=SECONDS limits the wait)",
                        target, holder, LOCK_TIMEOUT_ENV,
                    )  # fmt: skip
                    announced = True
                time.sleep(delay)
                delay = min(delay * 2, 0.5)
            if _same_file(fd, path):
                if not shared:
                    _describe_holder(fd)
                return fd, path
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)  # its holder removed that file as it finished: lock the one there now


def _open(target: Path, *, shared: bool) -> tuple[int | None, Path | None]:
    first: OSError | None = None
    for path in lock_paths(target):
        if path.parent == target and not target.is_dir():
            continue
        try:
            return os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666), path
        except OSError as exc:
            first = first or exc
            if exc.errno not in _NOT_WRITABLE:
                break
        if shared:  # a lock file someone else made, in a folder we may only read
            with contextlib.suppress(OSError):
                return os.open(path, os.O_RDONLY | os.O_CLOEXEC), path
    if shared:
        return None, None
    reason = (first.strerror if first else None) or "cannot be created"
    raise OutputError(
        f"{target}: cannot create its lock file {lock_paths(target)[0]}: {reason}"
    ) from first


def _try_lock(fd: int, *, shared: bool) -> bool:
    try:
        fcntl.flock(fd, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def _same_file(fd: int, path: Path) -> bool:
    try:
        here, there = os.fstat(fd), os.stat(path)
    except OSError:
        return False
    return (here.st_dev, here.st_ino) == (there.st_dev, there.st_ino)


def _describe_holder(fd: int) -> None:
    """Write "PID command" into the lock file, for the message a waiting writer shows."""
    program = "torchship" if "torchship" in (sys.argv[0] if sys.argv else "") else "python"
    text = f"{os.getpid()} {program} {' '.join(sys.argv[1:])}"[:300] + "\n"
    with contextlib.suppress(OSError):
        os.ftruncate(fd, 0)
        os.pwrite(fd, text.encode("utf-8", "replace"), 0)


def _holder(fd: int) -> str:
    try:
        text = os.pread(fd, 512, 0).decode("utf-8", "replace").strip()
    except OSError:
        text = ""
    pid, _, command = text.partition(" ")
    if pid.isdigit() and process_alive(process_identity(int(pid))):
        return f"PID {pid} ({command})" if command else f"PID {pid}"
    return "another process (reading it)"


def _release(fd: int, path: Path, *, shared: bool) -> None:
    try:
        # a reader removes the file only when it is the last holder
        if (not shared or _try_lock(fd, shared=False)) and _same_file(fd, path):
            with contextlib.suppress(OSError):
                path.unlink()
    finally:
        os.close(fd)


def _timeout() -> float | None:
    text = os.environ.get(LOCK_TIMEOUT_ENV, "").strip()
    if not text:
        return None
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if math.isnan(value) or value < 0:
        raise ConfigError(
            f"{LOCK_TIMEOUT_ENV}={text!r}: expected seconds to wait for a busy output folder "
            "(0: do not wait; unset: wait as long as it takes)"
        )
    return None if math.isinf(value) else value
