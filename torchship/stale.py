"""Staging folders of killed runs: marked as ours when made, removed by the next run on the output.

A run that is killed (SIGKILL, a power cut) cannot remove its hidden staging folder. Each staging
folder therefore holds a marker file naming the process that made it (PID, its start time, the
boot and the host) and the output it was staging. The next writer of the same output, holding
that output's lock (torchship.locks), removes the folders whose marker names a process that no
longer runs. A folder without a valid marker, a marker for another output, or one made by a
process that is still running (or on another host, where that cannot be checked) is never
touched: a user's files are never mistaken for ours.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
from pathlib import Path

__all__ = [
    "MARKER_NAME",
    "process_identity",
    "process_alive",
    "mark_staging",
    "unmark_staging",
    "read_marker",
    "remove_stale",
]

log = logging.getLogger(__name__)

#: The marker file inside a staging folder; removed before the folder is renamed into place.
MARKER_NAME = ".torchship-staging.json"
_KIND = "torchship.staging/1"


def _start_ticks(pid: int) -> int | None:
    """A process's start time in clock ticks since boot (Linux /proc), None where unknown."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # the command name (field 2) may hold spaces and parentheses: fields resume after the last ")"
    fields = stat.rpartition(")")[2].split()
    try:
        return int(fields[19])  # field 22, starttime
    except (IndexError, ValueError):
        return None


def _boot_id() -> str | None:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return None


def process_identity(pid: int | None = None) -> dict:
    """What names a process uniquely on this machine: a PID alone can be reused."""
    pid = os.getpid() if pid is None else pid
    return {
        "pid": pid,
        "start": _start_ticks(pid),
        "boot": _boot_id(),
        "host": socket.gethostname(),
    }


def process_alive(identity: dict) -> bool:
    """Whether the process `identity` names still runs; True when that cannot be told (another
    host, no /proc and no permission to signal it), so nothing of a live run is removed."""
    pid = identity.get("pid")
    if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0:
        return False
    if identity.get("host") != socket.gethostname():
        return True
    boot = _boot_id()
    if boot is not None and identity.get("boot") not in (None, boot):
        return False  # made before a reboot
    start = _start_ticks(pid)
    if start is not None:
        return identity.get("start") in (None, start)  # another start time: the PID was reused
    if Path("/proc/self/stat").exists():
        return False  # /proc works here and has no such process
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def mark_staging(folder: Path, target: Path) -> None:
    """Write the marker that makes `folder` a recognisable staging folder for `target`."""
    data = {"kind": _KIND, "target": Path(target).name, **process_identity()}
    (folder / MARKER_NAME).write_text(json.dumps(data) + "\n", encoding="utf-8")


def unmark_staging(folder: Path) -> None:
    (folder / MARKER_NAME).unlink(missing_ok=True)


def read_marker(folder: Path) -> dict | None:
    """The marker of a staging folder, None when `folder` holds no valid one."""
    path = folder / MARKER_NAME
    try:
        if path.is_symlink() or not path.is_file() or path.stat().st_size > 4096:
            return None
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and data.get("kind") == _KIND else None


def remove_stale(parent: Path, prefix: str, target: Path) -> list[Path]:
    """Remove the staging folders for `target` in `parent` (names starting with `prefix`) whose
    makers are gone; returns what was removed. Call it holding `target`'s lock."""
    removed = []
    try:
        entries = list(parent.iterdir())
    except OSError:
        return removed
    for entry in entries:
        if not entry.name.startswith(prefix) or entry.is_symlink() or not entry.is_dir():
            continue
        marker = read_marker(entry)
        if marker is None or marker.get("target") != Path(target).name or process_alive(marker):
            continue
        log.info("removing %s: the staging folder of a killed run (PID %s)", entry, marker["pid"])
        shutil.rmtree(entry, ignore_errors=True)
        if not entry.exists():
            removed.append(entry)
    return removed
