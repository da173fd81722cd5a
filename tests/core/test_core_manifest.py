"""Manifest contents and the atomic-output helpers behind every output directory."""

from __future__ import annotations

import hashlib
import json

import pytest

from torchship.api import staged_output
from torchship.files import atomic_dir, atomic_path
from torchship.manifest import build_manifest, read_manifest, write_manifest
from torchship.sources import load_model


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
