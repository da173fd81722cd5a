"""The layer contract (docs/design.md, "Layers"), checked by import-linter on the real code.

exporter/, runtimes/ and calibration/ sit beside torchship/ on disk and are mapped into the
namespace at install time, which import-linter cannot follow; the check runs on a copy laid
out as the installed namespace (torchship/exporter/, torchship/runtimes/, ...).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib

ROOT = Path(__file__).resolve().parents[2]
MAPPED = {"exporter": "exporter", "runtimes": "runtimes", "calibration": "calibration"}
_SKIP = shutil.ignore_patterns("__pycache__", "*.npz", "*.safetensors")


def _mirror(tmp_path: Path) -> Path:
    pkg = tmp_path / "torchship"
    shutil.copytree(ROOT / "torchship", pkg, ignore=_SKIP)
    for name, folder in MAPPED.items():
        shutil.copytree(ROOT / folder, pkg / name, ignore=_SKIP)
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    return tmp_path


def _lint(tree: Path) -> subprocess.CompletedProcess:
    code = "import sys; from importlinter.cli import lint_imports; sys.exit(lint_imports())"
    env = {**os.environ, "PYTHONPATH": str(tree)}
    return subprocess.run(
        [sys.executable, "-c", code], cwd=tree, env=env, capture_output=True, text=True, timeout=300
    )


def test_the_code_keeps_the_layer_contract(tmp_path):
    result = _lint(_mirror(tmp_path))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "broken" in result.stdout and "0 broken" in result.stdout


@pytest.mark.parametrize(
    ("module", "line", "contract"),
    [
        ("errors.py", "import torchship.cli", "the ground imports nothing of torchship above it"),
        ("runtimes/stats.py", "import torchship.exporter.parity", "runtimes import nothing"),
        ("exporter/passes.py", "import torchship.pipeline.config", "do not import the pipeline"),
        ("verify.py", "import torchship.cli.main", "nothing imports the CLI but the CLI"),
    ],
)
def test_a_deliberate_violation_fails_the_contract(tmp_path, module, line, contract):
    tree = _mirror(tmp_path)
    target = tree / "torchship" / module
    target.write_text(target.read_text() + f"\n{line}  # deliberate\n")
    result = _lint(tree)
    assert result.returncode != 0
    assert "BROKEN" in result.stdout and contract in result.stdout, result.stdout


def test_every_module_is_named_in_the_cli_contract():
    """A new top-level module must join "nothing imports the CLI" or it would escape it."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    contract = next(c for c in config["contracts"] if c["name"].startswith("nothing imports"))
    top = {p.stem for p in (ROOT / "torchship").glob("*.py")} - {"__init__", "__main__"}
    top |= {p.name for p in (ROOT / "torchship").iterdir() if (p / "__init__.py").is_file()}
    top |= set(MAPPED)
    named = {m.removeprefix("torchship.") for m in contract["source_modules"]}
    assert top - {"cli"} == named
