"""torchship.stale: staging folders of killed runs are removed by the next run on the same
output, and nothing else is: not a user's folder, not a live run's, not another output's."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from torchship.files import atomic_dir
from torchship.staging import staged_output
from torchship.stale import MARKER_NAME, process_alive, process_identity


@pytest.fixture(scope="module")
def dead() -> dict:
    """The identity of a process that has exited."""
    proc = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)  # fmt: skip
    identity = {**process_identity(), "pid": int(proc.stdout), "start": 1}
    assert not process_alive(identity)
    return identity


def _staging(folder: Path, *, target: str, owner: dict | None) -> Path:
    folder.mkdir(parents=True)
    (folder / "model.onnx").write_bytes(b"\0" * 1000)
    if owner is not None:
        data = {"kind": "torchship.staging/1", "target": target, **owner}
        (folder / MARKER_NAME).write_text(json.dumps(data))
    return folder


def test_process_identity_tells_a_reused_pid_from_the_live_process():
    me = process_identity()
    assert process_alive(me)
    assert not process_alive({**me, "start": (me["start"] or 0) + 1}) or me["start"] is None
    assert process_alive({**me, "host": "another-host"})  # cannot tell: keep its files
    assert not process_alive({"pid": "12"})


def test_the_next_atomic_dir_removes_only_stale_staging_of_its_own_output(tmp_path, dead):
    me = process_identity()
    stale = _staging(tmp_path / ".out.k1ll3d00", target="out", owner=dead)
    reused = _staging(tmp_path / ".out.reused00", target="out", owner={**me, "start": -1})
    old = _staging(tmp_path / ".out.old.abcd1234", target="out", owner=dead)
    user = _staging(tmp_path / ".out.mine", target="out", owner=None)  # no marker: not ours
    live = _staging(tmp_path / ".out.running", target="out", owner=me)
    other = _staging(tmp_path / ".other.k1ll3d00", target="other", owner=dead)
    elsewhere = _staging(tmp_path / ".out.zzz", target="not-out", owner=dead)
    with atomic_dir(tmp_path / "out") as stage:
        (stage / "manifest.json").write_text("{}")
    assert not stale.exists() and not old.exists()
    assert not reused.exists() or me["start"] is None
    assert user.exists() and live.exists() and other.exists() and elsewhere.exists()
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["manifest.json"]


def test_the_next_staged_output_removes_stale_staging_inside_it(tmp_path, dead):
    out = tmp_path / "exported"
    stale = _staging(out / ".torchship-staging-k1ll3d", target="exported", owner=dead)
    user = _staging(out / ".torchship-staging-notes", target="exported", owner=None)
    with staged_output(out) as stage:
        (stage / "manifest.json").write_text("{}")
        assert (stage / MARKER_NAME).is_file()  # the running stage is marked...
    assert not stale.exists() and user.exists()
    assert not (out / MARKER_NAME).exists()  # ...and the marker never reaches the output


def test_a_marker_that_is_a_symlink_or_garbage_is_not_ours(tmp_path, dead):
    garbage = _staging(tmp_path / ".out.garbage0", target="out", owner=None)
    (garbage / MARKER_NAME).write_text("{not json")
    linked = _staging(tmp_path / ".out.linked00", target="out", owner=None)
    real = tmp_path / "marker.json"
    real.write_text(json.dumps({"kind": "torchship.staging/1", "target": "out", **dead}))
    os.symlink(real, linked / MARKER_NAME)
    with atomic_dir(tmp_path / "out") as stage:
        (stage / "manifest.json").write_text("{}")
    assert garbage.exists() and linked.exists()
