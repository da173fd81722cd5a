"""Resource faults at the write layer: a full disk or a read-only folder is exit 2 naming the
output, the reason and the file, and nothing is half-written or left behind."""

from __future__ import annotations

import errno
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from torchship.cli import main
from torchship.errors import OutputError, ParityError
from torchship.faults import output_error
from torchship.files import atomic_dir


def _listing(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*"))


@pytest.fixture
def disk_full_under(monkeypatch):
    """Path.write_text raises ENOSPC for the JSON files written under the folder given (the
    staging marker still fits), as a filling disk does."""

    def install(folder: Path):
        real = Path.write_text

        def write_text(self, *args, **kwargs):
            marker = self.name.startswith(".torchship-staging")
            if self.absolute().is_relative_to(folder.absolute()) and not marker:
                raise OSError(errno.ENOSPC, "No space left on device")
            return real(self, *args, **kwargs)

        monkeypatch.setattr(Path, "write_text", write_text)

    return install


def test_disk_full_in_export_is_exit_2_naming_the_output_and_the_file(
    tmp_path, disk_full_under, capsys
):
    out = tmp_path / "exported"
    disk_full_under(tmp_path)
    code = main(["export", "demo", "--format", "onnx", "--legacy-onnx", "-o", str(out)])
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert f"{out}: cannot write the output: No space left on device" in err
    assert f"({out}/reference_inputs.json)" in err  # the file, at its place in the output
    assert _listing(tmp_path) == []  # not even the folder it created


def test_disk_full_keeps_the_previous_output_whole(tmp_path):
    target = tmp_path / "bundle"
    with atomic_dir(target) as stage:
        (stage / "model.onnx").write_bytes(b"old")
        (stage / "manifest.json").write_text("{}")
    with pytest.raises(OutputError, match="No space left on device") as caught:
        with atomic_dir(target) as stage:
            (stage / "model.onnx").write_bytes(b"new, half")
            raise OSError(errno.ENOSPC, "No space left on device", str(stage / "model.onnx"))
    assert f"({target}/model.onnx)" in str(caught.value)
    assert (target / "model.onnx").read_bytes() == b"old"
    assert _listing(tmp_path) == ["bundle", "bundle/manifest.json", "bundle/model.onnx"]


def test_a_library_error_on_a_full_file_system_is_a_full_disk(tmp_path, monkeypatch):
    # torch.save says "RuntimeError: ... file write failed" on a full disk, with no errno
    error = RuntimeError("PytorchStreamWriter failed writing file data/0: file write failed")
    monkeypatch.setattr("torchship.faults._free_bytes", lambda folder: 4096)
    found = output_error(tmp_path / "out", error, where=tmp_path)
    assert found is not None and "No space left on device (4096 bytes free" in str(found)
    # a check that failed is never taken for a full disk
    parity = ParityError("model.onnx: output mismatch")
    assert output_error(tmp_path / "out", parity, where=tmp_path) is None
    monkeypatch.setattr("torchship.faults._free_bytes", lambda folder: 10 << 30)
    assert output_error(tmp_path / "out", error, where=tmp_path) is None


def _namespace_works() -> bool:
    if shutil.which("unshare") is None:
        return False
    probe = subprocess.run(
        ["unshare", "-rm", "sh", "-c", "mount -t tmpfs -o size=64k tmpfs /mnt 2>/dev/null || "
         "mount -t tmpfs -o size=64k tmpfs /tmp"], capture_output=True,
    )  # fmt: skip
    return probe.returncode == 0


needs_namespace = pytest.mark.skipif(
    not _namespace_works(),
    reason="needs `unshare -rm` (a user + mount namespace) to mount a tiny tmpfs or a read-only "
    "bind; the ENOSPC injection tests cover the same paths",
)


def _in_namespace(script: str, folder: Path, *argv: str) -> subprocess.CompletedProcess:
    """Run `script` in a private mount namespace: $1 is `folder`, $2 python, the rest argv."""
    return subprocess.run(
        ["unshare", "-rm", "sh", "-c", script, "sh", str(folder), sys.executable, *argv],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip


_RUN_AND_LIST = """
{mount} || exit 99
folder=$1; python=$2; shift 2
"$python" -m torchship "$@" 2>"$folder.err"
echo "rc=$?"
ls -A "$folder"
"""


@pytest.mark.slow
@needs_namespace
def test_a_real_full_tmpfs_is_exit_2_with_nothing_left(tmp_path):
    folder = tmp_path / "small"
    folder.mkdir()
    script = _RUN_AND_LIST.format(mount='mount -t tmpfs -o size=300k tmpfs "$1"')
    argv = ["export", "demo", "--format", "onnx", "--legacy-onnx", "-o", f"{folder}/out"]
    proc = _in_namespace(script, folder, *argv)
    lines = proc.stdout.split()
    err = (tmp_path / "small.err").read_text().strip()
    assert lines[0] == "rc=2", (proc.stdout, proc.stderr, err)
    assert lines[1:] == []  # the export created out/ and removed it again
    assert len(err.splitlines()) == 1 and "No space left on device" in err, err
    assert f"{folder}/out: cannot write the output" in err


@needs_namespace
@pytest.mark.parametrize("command", ["ship", "export"])
def test_a_read_only_folder_is_exit_2_naming_it(tmp_path, command):
    folder = tmp_path / "ro"
    folder.mkdir()
    script = _RUN_AND_LIST.format(mount='mount --bind -o ro "$1" "$1"')
    argv = [command, *(["demo", "--format", "onnx"] if command == "export" else [])]
    proc = _in_namespace(script, folder, *argv, "-o", f"{folder}/out")
    err = (tmp_path / "ro.err").read_text().strip()
    assert proc.stdout.split() == ["rc=2"], (proc.stdout, proc.stderr, err)
    assert len(err.splitlines()) == 1 and "Read-only file system" in err or "read-only" in err
    assert f"{folder}/out" in err
