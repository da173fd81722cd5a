"""Signals sent to a real `torchship` process: SIGINT, SIGTERM and SIGHUP at several points of a
`ship` run leave the previous bundle whole and no staging folder or lock behind, with exit
130/143/129 and one line; a SIGKILLed run's staging folder is removed by the next run; a Ctrl-C
while torch imports torch._dynamo is an interrupt, not a failed export."""

from __future__ import annotations

import hashlib
import os
import queue
import shutil
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from torchship.cli import main
from torchship.stale import MARKER_NAME
from torchship.verify import verify_bundle

pytestmark = pytest.mark.slow


class Run:
    """`python -m torchship -v ARGV` with SIGINT restored (a background job of a
    non-interactive shell starts with it ignored); its log lines are read as they come."""

    def __init__(self, *argv: str, cwd: Path) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "torchship", "-v", *argv],
            cwd=cwd,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "COLUMNS": "400"},  # log lines unwrapped
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        )
        self.lines: list[str] = []
        self._queue: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.proc.stderr:
            self._queue.put(line.rstrip("\n"))
        self._queue.put(None)

    def wait_for(self, text: str, timeout: float = 600) -> None:
        while True:
            line = self._queue.get(timeout=timeout)
            if line is None:
                raise AssertionError(f"exited before logging {text!r}:\n" + "\n".join(self.lines))
            self.lines.append(line)
            if text in line:
                return

    def stop(self, signum: int) -> tuple[int, list[str]]:
        """Send `signum`; (exit code, stderr lines written after it)."""
        seen = len(self.lines)
        self.proc.send_signal(signum)
        code = self.proc.wait(timeout=300)
        while (line := self._queue.get(timeout=60)) is not None:
            self.lines.append(line)
        return code, [line for line in self.lines[seen:] if line.strip()]


def _digest(folder: Path) -> dict[str, str]:
    return {
        p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def previous(tmp_path_factory) -> Path:
    """A verified torchship output for `ship -o` to replace (an ONNX export: quick to make)."""
    out = tmp_path_factory.mktemp("previous") / "bundle"
    assert main(["export", "demo", "--format", "onnx", "--legacy-onnx", "-o", str(out)]) == 0
    return out


@pytest.fixture
def bundle(tmp_path, previous) -> Path:
    out = tmp_path / "bundle"
    shutil.copytree(previous, out)
    return out


@pytest.mark.parametrize(
    "point, signum, code",
    [
        ("exporting onnx", signal.SIGINT, 130),  # inside torch's ONNX export
        ("exporting exported-program", signal.SIGTERM, 143),  # inside torch.export
        ("parity ok for model.onnx", signal.SIGHUP, 129),  # between steps
    ],
)
def test_a_signal_leaves_the_previous_bundle_and_nothing_else(bundle, point, signum, code):
    before = _digest(bundle)
    run = Run("ship", "-o", str(bundle), "--no-prune", cwd=bundle.parent)
    run.wait_for(point)
    assert len(list(bundle.parent.glob(".bundle.*"))) >= 1  # the staging folder (and lock)
    exit_code, after = run.stop(signum)
    assert exit_code == code, after
    name = "" if signum == signal.SIGINT else f" by {signal.Signals(signum).name}"
    assert after[-1] == f"interrupted{name}; no partial output was kept"
    assert not any("error" in line.lower() for line in after), after
    assert _digest(bundle) == before
    assert sorted(p.name for p in bundle.parent.iterdir()) == ["bundle"]  # no stage, no lock
    assert verify_bundle(bundle).passed


def test_a_killed_runs_staging_folder_is_removed_by_the_next_run(bundle):
    killed = Run("ship", "-o", str(bundle), "--no-prune", cwd=bundle.parent)
    killed.wait_for("exporting onnx")
    killed.stop(signal.SIGKILL)
    stale = [p for p in bundle.parent.iterdir() if p.is_dir() and p.name.startswith(".bundle.")]
    assert len(stale) == 1 and (stale[0] / MARKER_NAME).is_file()
    (bundle.parent / ".bundle.notes").mkdir()  # looks like a staging folder, is the user's

    run = Run("ship", "-o", str(bundle), "--no-prune", cwd=bundle.parent)
    run.wait_for("staging folder of a killed run")
    run.wait_for("exporting torchscript")
    exit_code, after = run.stop(signal.SIGTERM)
    assert exit_code == 143, after
    assert sorted(p.name for p in bundle.parent.iterdir()) == [".bundle.notes", "bundle"]
    assert verify_bundle(bundle).passed


# Ctrl-C while torch imports a torch._dynamo module: the dynamo ONNX exporter's capture
# strategies swallowed it and fell back to the legacy exporter, and torch.export then failed on
# the half-imported package ("module 'torch._dynamo' has no attribute 'exc'", exit 1).
_INTERRUPT_DURING_IMPORT = """
import importlib.abc, os, signal, sys

class CtrlC(importlib.abc.MetaPathFinder):
    fired = False

    def find_spec(self, name, path, target=None):
        if name == sys.argv[1] and not CtrlC.fired:
            CtrlC.fired = True
            os.kill(os.getpid(), signal.SIGINT)
        return None

sys.meta_path.insert(0, CtrlC())
from torchship.cli import main
sys.exit(main(sys.argv[2:]))
"""


@pytest.mark.parametrize("module", ["torch._dynamo.eval_frame", "torch._dynamo.guards"])
def test_ctrl_c_while_torch_imports_dynamo_is_an_interrupt(tmp_path, module):
    out = tmp_path / "exported"
    proc = subprocess.run(
        [sys.executable, "-c", _INTERRUPT_DURING_IMPORT, module,
         "export", "demo", "--format", "onnx,exported-program", "-o", str(out)],
        capture_output=True, text=True, timeout=600,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )  # fmt: skip
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 130, proc.stderr
    assert lines[-1] == "interrupted; no partial output was kept"
    assert "falling back" not in proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == []
