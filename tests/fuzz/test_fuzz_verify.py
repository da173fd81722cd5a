"""Fuzz the manifests `torchship verify` is handed: paths escaping the bundle, absolute paths,
NUL bytes, symlinks out of the bundle and in loops, absurd sizes and types, artifacts that are
not among the hashed files, and manifest text that is not JSON or nests without end."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path

from fuzzing import check_failure, fuzz_settings
from hypothesis import example, given
from hypothesis import strategies as st

from torchship.errors import ToolchainError
from torchship.verify import verify_bundle

_PAYLOAD = b"weights" * 10
_SHA = hashlib.sha256(_PAYLOAD).hexdigest()
_PATHS = ["model.onnx", "sub/model.ts", "../outside.txt", "/etc/hostname", "sub/../../outside.txt",
          "link-out", "link-in", "loop", "sub", "", ".", "model.onnx\0.txt", "x" * 5000,
          "ünï/cødé.pt2", "dir-link/outside.txt", "manifest.json"]  # fmt: skip
_anything = st.one_of(st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(),
                      st.text(max_size=30), st.lists(st.integers(), max_size=3))  # fmt: skip


def _mostly(likely, *rest):
    """`likely` nine times in ten: hostile details inside a manifest verify gets into."""
    return st.one_of(likely, likely, likely, likely, likely, likely, likely, likely, likely, *rest)


@st.composite
def file_entries(draw) -> dict:
    entry = {
        "path": draw(_mostly(st.sampled_from(_PATHS), _anything)),
        "sha256": draw(_mostly(st.just(_SHA), st.text(max_size=64), _anything)),
        "size_bytes": draw(_mostly(st.just(len(_PAYLOAD)), st.integers(-1, 2**80), _anything)),
    }
    for key in draw(st.lists(st.sampled_from(list(entry)), unique=True, max_size=2)):
        del entry[key]
    return entry


@st.composite
def artifact_entries(draw) -> dict:
    return {
        "path": draw(_mostly(st.sampled_from(_PATHS), _anything)),
        "format": draw(_mostly(st.sampled_from(["onnx", "torchscript", "exported-program",
                                                  "eager", "tensorrt-engine"]), _anything)),
        "precision": draw(st.one_of(st.sampled_from(["fp32", "int8", "fp99"]), _anything)),
        "inputs": draw(st.one_of(st.just([{"name": "x", "dtype": "float32", "shape": [1, 4]}]),
                                 st.lists(st.dictionaries(st.sampled_from(["name", "dtype",
                                 "shape", "example_shape"]), _anything), max_size=2), _anything)),
        "outputs": draw(st.one_of(st.just(["y"]), _anything)),
    }  # fmt: skip


@st.composite
def manifests(draw) -> str:
    kind = draw(st.sampled_from(["object"] * 12 + ["junk", "deep", "other-json"]))
    if kind == "junk":
        return draw(st.text(max_size=100))
    if kind == "deep":
        depth = draw(st.integers(1, 100_000))
        return "[" * depth + "]" * depth
    if kind == "other-json":
        return json.dumps(draw(_anything))
    data = {
        "files": draw(_mostly(st.lists(file_entries(), min_size=1, max_size=5), _anything)),
        "artifacts": draw(_mostly(st.lists(artifact_entries(), max_size=3), _anything)),
    }
    return json.dumps(data)


def _bundle(root: Path) -> Path:
    bundle = root / "bundle"
    (bundle / "sub").mkdir(parents=True)
    (bundle / "model.onnx").write_bytes(_PAYLOAD)
    (bundle / "sub" / "model.ts").write_bytes(_PAYLOAD)
    (root / "outside.txt").write_bytes(_PAYLOAD)
    os.symlink(root / "outside.txt", bundle / "link-out")
    os.symlink("model.onnx", bundle / "link-in")
    os.symlink("loop", bundle / "loop")
    os.symlink(root, bundle / "dir-link")
    return bundle


_KNOWN = [  # what the search found or must keep covering, always run
    {"files": [{"path": "model.onnx\0.txt", "sha256": _SHA, "size_bytes": 70}]},
    {"files": [{"path": "x" * 5000}]},
    {"files": [{"path": ["model.onnx"]}], "artifacts": [{"path": ["model.onnx"]}]},
    {"files": [], "artifacts": [{"path": "../outside.txt", "format": "onnx"}]},
    {"files": [{"path": "link-out", "sha256": _SHA, "size_bytes": 70}]},
]


@example(json.dumps(_KNOWN[0]), [])
@example(json.dumps(_KNOWN[1]), [])
@example(json.dumps(_KNOWN[2]), [])
@example(json.dumps(_KNOWN[3]), [])
@example(json.dumps(_KNOWN[4]), [])
@example("[" * 100_000 + "]" * 100_000, [])
@fuzz_settings(400)
@given(manifests(), st.lists(st.sampled_from(["reference_inputs.json", "reference_outputs.json"]),
                             unique=True))  # fmt: skip
def test_any_manifest_verifies_or_fails_in_one_line(text, references):
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        bundle = _bundle(root)
        (bundle / "manifest.json").write_text(text, encoding="utf-8", errors="surrogatepass")
        for name in references:  # reference files that are not what they claim
            (bundle / name).write_text('{"polygraphy_class": "RunResults", "lst": [[]]}')
        before = {p: p.lstat().st_mtime_ns for p in root.rglob("*")}
        try:
            report = verify_bundle(bundle)
        except ToolchainError as exc:
            check_failure(exc)
        else:
            message = report.message()
            assert "\n" not in message and len(message) <= 2000
            outside = [c for c in report.checks if c.status == "ok" and c.path.startswith("..")]
            assert not outside, outside
        after = {p: p.lstat().st_mtime_ns for p in root.rglob("*")}
        assert after == before  # verify writes nothing, leaves no lock file
        assert (root / "outside.txt").read_bytes() == _PAYLOAD
