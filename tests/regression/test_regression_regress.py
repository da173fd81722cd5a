"""`torchship regress` end to end on two small ONNX MLPs; `heavy` does about twice the work."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from torchship.cli.main import main
from torchship.regression.regress import regress_artifacts

FAST = ["--rounds", "6", "--iters", "15", "--warmup", "3", "--threads", "1", "--batch", "8"]


def test_a_known_2x_slowdown_is_caught(mlp_models):
    result = regress_artifacts(
        mlp_models["light"], mlp_models["heavy"], threshold_pct=5, rounds=6, iters=15,
        warmup=3, threads=1, batch=8,
    )  # fmt: skip
    (row,) = result.rows
    assert row.verdict == "slower" and not result.passed
    # spinning thread pools once read a 1.7x model as 1.04x: the ratio must look like the work
    assert 1.4 < row.comparison.ratio < 3.0
    assert row.comparison.ci_low > 1.2


def test_same_model_passes(mlp_models, capsys):
    light = str(mlp_models["light"])
    assert main(["regress", light, light, *FAST, "--json", "-"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["passed"] is True and data["rows"][0]["verdict"] != "slower"


def test_cli_exits_1_with_junit(mlp_models, tmp_path, capsys):
    junit = tmp_path / "regress.xml"
    argv = ["regress", str(mlp_models["light"]), str(mlp_models["heavy"]), *FAST]
    assert main([*argv, "--junit", str(junit)]) == 1
    assert (
        "regression: ort-cpu / fp32 / batch 8 / light.onnx -> heavy.onnx" in capsys.readouterr().out
    )
    assert "<failure" in junit.read_text()


def test_faster_candidate_is_not_a_regression(mlp_models, capsys):
    argv = ["regress", str(mlp_models["heavy"]), str(mlp_models["light"]), *FAST]
    assert main(argv) == 0
    assert "faster" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("extra", "code", "message"),
    [
        (["--rounds", "1"], 2, "--rounds 1: a verdict needs at least 4 rounds"),
        # 2 or 3 rounds are always inconclusive: a gate that could never fail
        (["--rounds", "3"], 2, "--rounds 3: a verdict needs at least 4 rounds"),
        (["--runtime", "nope"], 2, "unknown runtime 'nope'"),
        (["--batch", "0"], 2, "batch must be >= 1"),
    ],
)
def test_bad_usage_exits_2(mlp_models, capsys, extra, code, message):
    light = str(mlp_models["light"])
    assert main(["regress", light, light, *extra]) == code
    assert message in capsys.readouterr().err


def test_missing_file_exits_2(tmp_path, capsys):
    assert main(["regress", str(tmp_path / "a.onnx"), str(tmp_path / "b.onnx")]) == 2
    assert "no such file" in capsys.readouterr().err


def test_ship_json_to_stdout_is_only_json(monkeypatch, tmp_path, capsys):
    import torchship.cli.ship

    gate = SimpleNamespace(name="parity", passed=True, detail="ok")
    result = SimpleNamespace(
        gates=[gate], bundle=tmp_path, passed=True, release=None, to_dict=lambda: {"passed": True}
    )
    monkeypatch.setattr(torchship.cli.ship, "load_pipeline", lambda path: path)
    monkeypatch.setattr(torchship.cli.ship, "run_pipeline", lambda config, **kw: result)
    monkeypatch.setattr(torchship.cli.ship, "require_pipeline", lambda result: None)
    assert main(["ship", str(tmp_path / "pipeline.toml"), "--json", "-"]) == 0
    assert json.loads(capsys.readouterr().out) == {"passed": True}
    assert main(["ship", str(tmp_path / "pipeline.toml")]) == 0
    assert "pass  parity: ok" in capsys.readouterr().out
