"""Manifest contents and the atomic-output helpers behind every output directory."""

from __future__ import annotations

import hashlib
import json

import pytest

from torchship.errors import ConfigError
from torchship.files import atomic_dir, atomic_path
from torchship.manifest import build_manifest, read_manifest, write_manifest
from torchship.sources import load_model
from torchship.staging import staged_output


def test_manifest_hashes_every_file(tmp_path):
    (tmp_path / "a.bin").write_bytes(b"abc")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b.txt").write_text("hello")
    model = load_model("demo")
    manifest = build_manifest(tmp_path, model=model, artifacts=[], command=["torchship", "x"])
    write_manifest(tmp_path, manifest)
    read = read_manifest(tmp_path)
    files = {f["path"]: f for f in read["files"]}
    assert set(files) == {"a.bin", "sub/b.txt"}
    assert files["a.bin"]["sha256"] == hashlib.sha256(b"abc").hexdigest()
    assert files["sub/b.txt"]["size_bytes"] == 5
    assert read["source"]["model"] == "demo" and read["source"]["weights_sha256"]
    assert read["inputs"][0]["shape"] == ["batch", 1, 32, 32]
    assert {"torch", "onnxruntime"} <= set(read["software"])
    assert "isa" in read["machine"]
    assert read["command"] == ["torchship", "x"]
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_atomic_path_removes_the_temp_file_on_failure(tmp_path):
    target = tmp_path / "model.onnx"
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_bytes(b"half")
            raise RuntimeError("crash mid-write")
    assert list(tmp_path.iterdir()) == []


def test_atomic_dir_keeps_the_old_bundle_when_interrupted(tmp_path):
    bundle = tmp_path / "dist"
    with atomic_dir(bundle) as stage:
        (stage / "manifest.json").write_text("{}")
    with pytest.raises(KeyboardInterrupt):
        with atomic_dir(bundle) as stage:
            (stage / "model.onnx").write_bytes(b"partial")
            raise KeyboardInterrupt
    assert sorted(p.name for p in bundle.iterdir()) == ["manifest.json"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dist"]


def test_atomic_dir_never_replaces_a_users_file_or_folder(tmp_path):
    notes = tmp_path / "notes.txt"
    notes.write_text("mine")
    project = tmp_path / "project"
    project.mkdir()
    (project / "main.py").write_text("print()")
    for target, message in ((notes, "not a directory"), (project, "not a torchship output")):
        with pytest.raises(ConfigError, match=message):
            with atomic_dir(target):
                pass
    assert notes.read_text() == "mine" and (project / "main.py").is_file()
    empty = tmp_path / "empty"
    empty.mkdir()
    with atomic_dir(empty) as stage:
        (stage / "manifest.json").write_text("{}")
    assert (empty / "manifest.json").is_file()


def test_outputs_are_readable_by_others_and_parents_must_be_folders(tmp_path):
    import os
    import stat

    from torchship.files import atomic_write_text

    mask = os.umask(0o022)
    try:
        atomic_write_text(tmp_path / "a.json", "{}")
        with atomic_dir(tmp_path / "bundle") as stage:
            (stage / "sub").mkdir()
            (stage / "sub" / "x.txt").write_text("x")
    finally:
        os.umask(mask)
    assert stat.S_IMODE((tmp_path / "a.json").stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "bundle").stat().st_mode) == 0o755
    with pytest.raises(ConfigError, match="a parent of this path is a file"):
        atomic_write_text(tmp_path / "a.json" / "b.json", "{}")


def test_ship_onto_a_file_exits_2_and_keeps_it(tmp_path, capsys):
    from torchship.cli.main import main

    notes = tmp_path / "notes.txt"
    notes.write_text("mine")
    assert main(["ship", "-o", str(notes)]) == 2
    assert "not a directory" in capsys.readouterr().err
    assert notes.read_text() == "mine"


def test_staged_output_moves_files_only_on_success(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("user file")
    with pytest.raises(ValueError):
        with staged_output(out) as stage:
            (stage / "model.onnx").write_bytes(b"x")
            raise ValueError("parity failed")
    assert sorted(p.name for p in out.iterdir()) == ["keep.txt"]
    with staged_output(out) as stage:
        (stage / "model.onnx").write_bytes(b"x")
        (stage / "manifest.json").write_text(json.dumps({}))
    assert sorted(p.name for p in out.iterdir()) == ["keep.txt", "manifest.json", "model.onnx"]


def test_staged_output_removes_a_directory_it_created(tmp_path):
    out = tmp_path / "new"
    with pytest.raises(ValueError):
        with staged_output(out):
            raise ValueError("boom")
    assert not out.exists()
