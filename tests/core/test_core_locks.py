"""torchship.locks and the write layer under concurrency: writers never interleave, a second
writer waits (or exits 2 "in use by PID N"), and a reader never sees half an output."""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from torchship.cli import main
from torchship.errors import ConfigError, OutputError
from torchship.exporter import engines
from torchship.files import atomic_dir
from torchship.locks import LOCK_TIMEOUT_ENV, lock_paths, output_lock
from torchship.staging import staged_output
from torchship.verify import verify_bundle

_HOLD = """
import sys
from torchship.locks import output_lock
with output_lock(sys.argv[1], shared=sys.argv[2] == "shared"):
    print("locked", flush=True)
    sys.stdin.readline()
"""


@contextlib.contextmanager
def held(target: Path, *, shared: bool = False):
    """Another process holding `target`'s lock for the block; yields its PID."""
    proc = subprocess.Popen(
        [sys.executable, "-c", _HOLD, str(target), "shared" if shared else "exclusive"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert proc.stdout.readline().strip() == "locked"
        yield proc.pid
    finally:
        proc.stdin.close()
        proc.wait(timeout=60)


def test_a_second_writer_exits_2_naming_the_pid_with_a_zero_timeout(tmp_path, monkeypatch):
    monkeypatch.setenv(LOCK_TIMEOUT_ENV, "0")
    target = tmp_path / "out"
    with held(target) as pid, pytest.raises(OutputError, match=f"in use by PID {pid}"):
        with atomic_dir(target):
            pass
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # no stage, no lock file left


def test_a_second_writer_waits_for_the_first(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv(LOCK_TIMEOUT_ENV, "60")
    target = tmp_path / "out"
    done = []

    def write():
        with staged_output(target) as stage:
            (stage / "manifest.json").write_text("{}")
        done.append(True)

    with held(target) as pid:
        thread = threading.Thread(target=write)
        thread.start()
        time.sleep(1.0)
        assert not done  # still waiting for the holder
    thread.join(timeout=60)
    assert done and (target / "manifest.json").is_file()
    assert f"in use by PID {pid}" in caplog.text
    assert not any(p.exists() for p in lock_paths(target))


def test_the_cli_exits_2_when_the_output_is_in_use(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv(LOCK_TIMEOUT_ENV, "0")
    out = tmp_path / "exported"
    with held(out) as pid:
        code = main(["export", "demo", "--format", "onnx", "--legacy-onnx", "-o", str(out)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and f"in use by PID {pid}" in err and len(err.splitlines()) == 1
    assert not out.exists()


def test_readers_share_and_writers_wait_for_readers(tmp_path, monkeypatch):
    monkeypatch.setenv(LOCK_TIMEOUT_ENV, "0")
    target = tmp_path / "bundle"
    target.mkdir()
    with held(target, shared=True):
        with output_lock(target, shared=True):  # two readers at once
            pass
        with pytest.raises(OutputError, match="in use by another process"):
            with output_lock(target):
                pass


def test_verify_waits_for_a_writer(tmp_path, monkeypatch):
    monkeypatch.setenv(LOCK_TIMEOUT_ENV, "0")
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    (bundle / "manifest.json").write_text(json.dumps({"files": []}))
    with held(bundle) as pid, pytest.raises(OutputError, match=f"in use by PID {pid}"):
        verify_bundle(bundle)
    assert verify_bundle(bundle).passed  # free again


def test_the_lock_is_reentrant_within_a_thread(tmp_path, monkeypatch):
    monkeypatch.setenv(LOCK_TIMEOUT_ENV, "0")
    with output_lock(tmp_path / "out"), output_lock(tmp_path / "out"):
        pass


def test_a_bad_timeout_is_a_config_error(tmp_path, monkeypatch):
    monkeypatch.setenv(LOCK_TIMEOUT_ENV, "soon")
    with pytest.raises(ConfigError, match=LOCK_TIMEOUT_ENV):
        with output_lock(tmp_path / "out"):
            pass


# Writers that each write a numbered, self-describing set of files, slowly; a reader that checks
# that every time it looks, all files come from one writer's one round.
_WRITER = """
import json, sys, time
from pathlib import Path
from torchship.files import atomic_dir
from torchship.staging import staged_output
kind, target, who = sys.argv[1], Path(sys.argv[2]), sys.argv[3]
stage_of = atomic_dir if kind == "dir" else staged_output
for round in range(4):
    tag = f"{who}-{round}"
    with stage_of(target) as stage:
        for i in range(5):
            (stage / f"part{i}.txt").write_text(tag)
            time.sleep(0.01)
        (stage / "manifest.json").write_text(json.dumps({"tag": tag, "files": []}))
"""

_READER = """
import json, sys, time
from pathlib import Path
from torchship.locks import output_lock
target, stop = Path(sys.argv[1]), Path(sys.argv[2])
seen = set()
while not stop.exists():
    with output_lock(target, shared=True):
        if (target / "manifest.json").is_file():
            tag = json.loads((target / "manifest.json").read_text())["tag"]
            parts = {p.read_text() for p in target.glob("part*.txt")}
            if parts != {tag}:
                print(f"mixed: manifest {tag}, parts {sorted(parts)}", flush=True)
                sys.exit(1)
            seen.add(tag)
    time.sleep(0.005)
print(len(seen))
"""


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["dir", "staged"])
def test_concurrent_writers_never_interleave_and_a_reader_never_sees_half(tmp_path, kind):
    target, stop = tmp_path / "out", tmp_path.parent / f"{tmp_path.name}.stop"
    reader = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(_READER), str(target), str(stop)],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    script = textwrap.dedent(_WRITER)
    writers = [
        subprocess.Popen([sys.executable, "-c", script, kind, str(target), f"w{i}"])
        for i in range(3)
    ]
    try:
        assert [w.wait(timeout=300) for w in writers] == [0, 0, 0]
    finally:
        stop.touch()
    out, _ = reader.communicate(timeout=120)
    stop.unlink()
    assert reader.returncode == 0, out
    assert int(out) >= 1  # it did look at finished outputs
    final = json.loads((target / "manifest.json").read_text())["tag"]
    assert {p.read_text() for p in target.glob("part*.txt")} == {final}
    leftovers = [p.name for p in tmp_path.iterdir() if p.name != "out"]
    assert leftovers == []  # no staging folder, no lock file
    assert [p.name for p in target.iterdir() if p.name.startswith(".")] == []


def _tiny_onnx(path: Path) -> Path:
    graph = helper.make_graph(
        [helper.make_node("Add", ["x", "w"], ["y"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])],
        [numpy_helper.from_array(np.ones(4, np.float32), "w")],
    )  # fmt: skip
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), path)
    return path


class _Build:
    """What build_engine returns, for a machine without TensorRT: the write path is tested."""

    plan, cached = b"serialized engine", False

    class info:  # noqa: N801 (stands in for EngineInfo)
        @staticmethod
        def to_dict() -> dict:
            return {"precision": "fp32"}


def test_build_engine_writes_its_file_and_manifest_entry_under_the_folder_lock(
    tmp_path, monkeypatch
):
    monkeypatch.setattr(engines, "build_engine", lambda onnx, **kwargs: _Build())
    onnx_path = _tiny_onnx(tmp_path / "model.onnx")
    out = tmp_path / "engines"
    monkeypatch.setenv(LOCK_TIMEOUT_ENV, "0")
    with held(out) as pid, pytest.raises(OutputError, match=f"in use by PID {pid}"):
        engines.build_engine_file(onnx_path, out=out, parity=False)
    assert not any(out.iterdir())
    result = engines.build_engine_file(onnx_path, out=out, parity=False)
    manifest = json.loads(result.manifest_path.read_text())
    assert [f["path"] for f in manifest["files"]] == [result.artifact.path.name]
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json", "model.fp32.engine"]
    assert not any(p.exists() for p in lock_paths(out))
