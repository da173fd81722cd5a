"""`torchship bench` on a model whose batch axis is fixed: it runs at the model's batch."""

from __future__ import annotations

import json
import textwrap

import pytest

from torchship.cli.main import main

MODEL = textwrap.dedent(
    """
    import torch

    def small():
        torch.manual_seed(0)
        return torch.nn.Sequential(torch.nn.Linear(6, 3), torch.nn.ReLU())
    """
)


@pytest.fixture()
def fixed_batch_onnx(tmp_path):
    source = tmp_path / "bench_models.py"
    source.write_text(MODEL)
    out = tmp_path / "exported"
    code = main(["export", f"{source}:small", "--input", "x:4x6", "--format", "onnx", "-o",
                 str(out)])  # fmt: skip
    assert code == 0
    return out / "model.onnx"


def _bench(path, tmp_path, *extra):
    report = tmp_path / "bench.json"
    code = main(["bench", str(path), "--iters", "3", "--warmup", "1", "--json", str(report),
                 *extra])  # fmt: skip
    return code, report


def test_without_batch_the_fixed_batch_is_used(fixed_batch_onnx, tmp_path, capsys):
    code, report = _bench(fixed_batch_onnx, tmp_path)
    assert code == 0, capsys.readouterr().err
    results = json.loads(report.read_text())["results"]
    assert [r["batch"] for r in results] == [4]


def test_an_explicit_other_batch_still_exits_2(fixed_batch_onnx, tmp_path, capsys):
    code, _ = _bench(fixed_batch_onnx, tmp_path, "--batch", "1")
    assert code == 2
    assert "axis 0 is fixed at 4" in capsys.readouterr().err


def test_a_dynamic_batch_model_still_defaults_to_batch_1(tmp_path, capsys):
    source = tmp_path / "bench_models.py"
    source.write_text(MODEL)
    out = tmp_path / "dyn"
    assert main(["export", f"{source}:small", "--input", "x:4x6", "--dynamic-batch",
                 "--format", "onnx", "-o", str(out)]) == 0  # fmt: skip
    code, report = _bench(out / "model.onnx", tmp_path)
    assert code == 0, capsys.readouterr().err
    assert [r["batch"] for r in json.loads(report.read_text())["results"]] == [1]
