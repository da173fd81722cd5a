"""Tiny Hugging Face architectures (torchship.models.hf_zoo) through every step of the CLI.

export (ONNX, parity vs eager) -> quantize (dynamic for text, static for vision/audio) -> prune
-> bench. A step may refuse (exit 1 or 2) but only with one line naming what it cannot do:
never `internal error` or a traceback. With TORCHSHIP_ZOO_TABLE=FILE the run writes the
architecture x step table (Markdown) there; README.md carries a copy.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from torchship.cli.main import main
from torchship.models.hf_zoo import HF_ZOO, ZooEntry

pytest.importorskip("transformers")

STEPS = ("export", "quantize", "prune", "bench")
_RESULTS: dict[str, dict[str, str]] = {}


@pytest.fixture(scope="module", autouse=True)
def zoo_table():
    yield _RESULTS
    target = os.environ.get("TORCHSHIP_ZOO_TABLE")
    if target and _RESULTS:
        Path(target).write_text(markdown_table(_RESULTS))


def markdown_table(results: dict[str, dict[str, str]]) -> str:
    lines = ["| architecture | " + " | ".join(STEPS) + " |", "|---" * (len(STEPS) + 1) + "|"]
    for entry in HF_ZOO:
        row = results.get(entry.name)
        if row:
            cells = [row.get(step, "-").replace("|", "/") for step in STEPS]
            lines.append(f"| {entry.name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _step(capsys, *argv) -> tuple[int, str]:
    """Run one command; (exit code, the one line that explains a refusal)."""
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    text = captured.err + captured.out
    assert "internal error" not in text and "Traceback" not in text, text
    if code == 0:
        return code, "ok"
    errors = [line for line in captured.err.splitlines() if line.startswith("error:")]
    verdict = [line for line in captured.out.splitlines() if line.startswith("result:")]
    assert len(errors) == 1 or verdict, text
    if errors:
        reason = errors[0].removeprefix("error: ")
    else:  # a check failed: its verdict, and the last warning that says why
        warnings = [line for line in captured.out.splitlines() if line.startswith("warning:")]
        why = warnings[-1].removeprefix("warning: ") if warnings else ""
        reason = f"{verdict[0].split(' (')[0].removeprefix('result: ')}: {why}"
    return code, f"exit {code}: {reason[:160]}"


def _calibration(entry: ZooEntry, model: Path, folder: Path) -> Path:
    manifest = json.loads((model.parent / "manifest.json").read_text())
    rng = np.random.default_rng(0)
    arrays = {}
    for spec in manifest["inputs"]:
        shape = [16, *spec["example_shape"][1:]]
        arrays[spec["name"]] = rng.standard_normal(shape).astype(np.float32)
    path = folder / "calib.npz"
    np.savez(path, **arrays)
    return path


@pytest.mark.slow
@pytest.mark.parametrize("entry", HF_ZOO, ids=lambda e: e.name)
def test_architecture_goes_through_every_step(entry: ZooEntry, tmp_path, capsys):
    row: dict[str, str] = {}
    _RESULTS[entry.name] = row
    source = [entry.source, "--config", entry.config_json, "--task", entry.task]
    code, row["export"] = _step(
        capsys, "export", *source, "--format", "onnx", "-o", tmp_path / "fp32"
    )
    assert code == 0, row["export"]
    model = tmp_path / "fp32" / "model.onnx"
    parity = json.loads((model.parent / "manifest.json").read_text())["metrics"]["parity"]
    assert parity["model.onnx"]["passed"]

    quantize = ["quantize", model, "--no-bench", "-o", tmp_path / "int8"]
    if entry.kind == "text":
        quantize += ["--mode", "dynamic"]
    else:
        quantize += ["--calib", _calibration(entry, model, tmp_path)]
    code, row["quantize"] = _step(capsys, *quantize)
    assert code in (0, 1)
    if code == 0:
        assert any(p.suffix == ".onnx" for p in (tmp_path / "int8").iterdir())

    code, row["prune"] = _step(
        capsys, "prune", *source, "--ratio", "0.3", "-o", tmp_path / "pruned"
    )
    assert code in (0, 1, 2)
    if code == 0:
        assert (tmp_path / "pruned" / "model.onnx").is_file()
    else:
        assert not (tmp_path / "pruned").exists()

    code, row["bench"] = _step(capsys, "bench", model, "--iters", "5", "--warmup", "1")
    assert code == 0, row["bench"]
