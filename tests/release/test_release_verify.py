"""`torchship verify`: tampered, deleted, added and swapped files are caught and named."""

from __future__ import annotations

import json
import re
import shutil

import pytest
import torch

from torchship.cli.main import main
from torchship.exporter.reference import OUTPUTS_FILE, load_reference, save_reference
from torchship.files import sha256_file


@pytest.fixture
def bundle(demo_bundle, tmp_path):
    copy = tmp_path / demo_bundle.name
    shutil.copytree(demo_bundle, copy)
    return copy


def verify(path, capsys) -> tuple[int, str]:
    code = main(["verify", str(path)])
    captured = capsys.readouterr()
    return code, captured.out + captured.err


def test_intact_bundle_verifies(bundle, capsys):
    code, text = verify(bundle, capsys)
    assert code == 0, text
    assert "verified" in text
    assert main(["verify", str(bundle), "--json", "-"]) == 0
    checks = json.loads(capsys.readouterr().out)["checks"]
    parity = {c["path"] for c in checks if c["check"] == "parity" and c["status"] == "ok"}
    assert parity == {"model.onnx", "model.ts"}


def test_flipped_byte_is_caught(bundle, capsys):
    data = bytearray((bundle / "model.onnx").read_bytes())
    data[len(data) // 2] ^= 0x01
    (bundle / "model.onnx").write_bytes(bytes(data))
    code, text = verify(bundle, capsys)
    assert code == 1
    assert "model.onnx: sha256 failed: sha256" in text and "(tampered)" in text


def test_deleted_file_is_caught(bundle, capsys):
    (bundle / "reference_outputs.json").unlink()
    code, text = verify(bundle, capsys)
    assert code == 1 and "reference_outputs.json: sha256 failed: missing (deleted)" in text


def test_added_file_is_caught(bundle, capsys):
    (bundle / "extra.onnx").write_bytes(b"not listed")
    code, text = verify(bundle, capsys)
    assert code == 1 and "extra.onnx: listed failed: not listed in the manifest" in text


def test_added_hidden_files_are_caught(bundle, capsys):
    """torchship writes no hidden file into a bundle, so a hidden one was added."""
    (bundle / ".evil").write_bytes(b"x")
    (bundle / ".git").mkdir()
    (bundle / ".git" / "x.onnx").write_bytes(b"x")
    assert main(["verify", str(bundle), "--json", "-"]) == 1
    checks = json.loads(capsys.readouterr().out)["checks"]
    unlisted = {c["path"] for c in checks if c["check"] == "listed" and c["status"] == "failed"}
    assert unlisted == {".evil", ".git/x.onnx"}


@pytest.mark.parametrize(
    ("manifest", "message"),
    [
        ({"files": ["model.onnx"]}, "files\\[0\\] must be an object, found str"),
        ({"files": [], "artifacts": [1]}, "artifacts\\[0\\] must be an object, found int"),
        ([], "must hold a JSON object, found list"),
    ],
)
def test_malformed_manifest_exits_2(tmp_path, capsys, manifest, message):
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    code, text = verify(tmp_path, capsys)
    assert code == 2 and re.search(message, text), text


def swap_in_other_weights(bundle) -> None:
    """Replace model.onnx with the demo exported from other weights (same I/O)."""
    from torchship.exporter import ExportOptions, export_model
    from torchship.models import load_demo

    model = load_demo()
    with torch.no_grad():
        for parameter in model.module.parameters():
            parameter.mul_(1.05)
    other = bundle.parent / "other"
    export_model(model, other, formats=["onnx"], options=ExportOptions(dynamo=False))
    shutil.copyfile(other / "model.onnx", bundle / "model.onnx")


def test_swapped_artifact_is_caught_by_its_hash(bundle, capsys):
    swap_in_other_weights(bundle)
    code, text = verify(bundle, capsys)
    assert code == 1 and "model.onnx: sha256 failed" in text


def test_swapped_artifact_with_a_forged_manifest_fails_parity(bundle, capsys):
    swap_in_other_weights(bundle)
    forge_manifest(bundle, "model.onnx")
    code, text = verify(bundle, capsys)
    assert code == 1
    assert "model.onnx: parity failed: output 'logits' on reference #0" in text
    assert "does not match the stored reference outputs" in text


def forge_manifest(bundle, name: str) -> None:
    """Record the current size and sha256 of `name`, as a forger would."""
    manifest_path = bundle / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    path = bundle / name
    for entry in manifest["files"] + manifest["artifacts"]:
        if entry.get("path") == name:
            entry["sha256"] = sha256_file(path)
            entry["size_bytes"] = path.stat().st_size
    manifest_path.write_text(json.dumps(manifest))


def rewrite_reference_outputs(bundle, change) -> None:
    """Store `change(outputs)` for every reference case, with a manifest that matches."""
    feeds_list, outputs_list = load_reference(bundle)
    outputs_list = [change(outputs) for outputs in outputs_list]
    save_reference(bundle, feeds_list=feeds_list, outputs_list=outputs_list)
    forge_manifest(bundle, OUTPUTS_FILE)


def test_stored_output_the_artifact_does_not_return_is_named(bundle, capsys):
    rewrite_reference_outputs(bundle, lambda outputs: {"scores": outputs["logits"]})
    code, text = verify(bundle, capsys)
    assert code == 1
    assert (
        "model.onnx: parity failed: output 'scores' missing on reference #0; the artifact "
        "returned ['logits']" in text
    ), text


def test_stored_output_of_another_shape_is_named(bundle, capsys):
    rewrite_reference_outputs(bundle, lambda outputs: {"logits": outputs["logits"][:, :3]})
    code, text = verify(bundle, capsys)
    assert code == 1
    assert re.search(
        r"model\.onnx: parity failed: output 'logits' on reference #0: shape \[\d+, (\d+)\], "
        r"stored \[\d+, 3\]",
        text,
    ), text


def test_not_a_bundle_exits_2(tmp_path, capsys):
    code, text = verify(tmp_path, capsys)
    assert code == 2 and "manifest.json: no such file" in text
    code, text = verify(tmp_path / "nope", capsys)
    assert code == 2 and "not a directory" in text


@pytest.mark.slow
def test_verify_accepts_the_demo_bundle_of_torchship_ship(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["ship", "-o", str(out), "--min-time", "0.01", "--threads", "1"]) == 0
    code, text = verify(out, capsys)
    assert code == 0 and "verified" in text
    (out / "model.pt2").write_bytes(b"swapped")
    code, text = verify(out, capsys)
    assert code == 1 and "model.pt2: sha256 failed" in text


@pytest.mark.slow
def test_quantized_bundle_verifies_against_its_own_outputs(tmp_path, pipeline_file):
    """INT8 is checked against what was shipped, not against eager on random inputs."""
    import numpy as np

    from torchship.models import demo_dataset
    from torchship.pipeline import load_pipeline, run_pipeline

    images, _ = demo_dataset("train")
    np.savez(tmp_path / "calib.npz", image=images[:64])
    extra = '\n[quantize]\npresets = ["auto"]\ncalib = "calib.npz"\n'
    path = pipeline_file(tmp_path)
    path.write_text(path.read_text().replace("\n[bench]", extra + "\n[bench]"))
    result = run_pipeline(load_pipeline(path))
    int8 = result.bundle / "int8-auto" / "model.int8.onnx"
    assert int8.is_file() and (int8.parent / "reference_outputs.json").is_file()
    assert main(["verify", str(result.bundle)]) == 0
