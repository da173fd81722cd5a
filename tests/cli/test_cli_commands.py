"""The command line end to end: outputs, JSON, and the exit code of every bad-input path."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest
import torch

from torchship.cli.main import main

MODELS = textwrap.dedent(
    """
    import torch
    from torch import nn

    class Small(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(6, 3)

        def forward(self, x):
            return self.fc(x).relu()

    class Branchy(Small):
        # Tracing bakes the Python int in: the traced artifact is wrong at another batch size.
        def forward(self, x):
            return self.fc(x) * int(x.shape[0])

    def small():
        torch.manual_seed(0)
        return Small()

    def branchy():
        torch.manual_seed(0)
        return Branchy()
    """
)


@pytest.fixture()
def models(tmp_path):
    path = tmp_path / "cli_models.py"
    path.write_text(MODELS)
    return path


def run(*argv):
    return main([str(a) for a in argv])


def test_export_writes_artifacts_and_manifest(models, tmp_path, capsys):
    out = tmp_path / "out"
    code = run("export", f"{models}:small", "--input", "x:2x6", "--dynamic-batch", "-o", out)
    assert code == 0, capsys.readouterr().err
    names = {p.name for p in out.iterdir()}
    assert {"model.ts", "model.onnx", "model.pt2", "manifest.json"} <= names
    assert {"reference_inputs.json", "reference_outputs.json"} <= names
    manifest = json.loads((out / "manifest.json").read_text())
    assert {a["format"] for a in manifest["artifacts"]} == {
        "torchscript",
        "onnx",
        "exported-program",
    }
    assert manifest["inputs"][0]["shape"] == ["batch", 6]
    assert "parity: pass" in capsys.readouterr().out


def test_parity_failure_exits_1_naming_the_tensor_and_keeps_nothing(models, tmp_path, capsys):
    out = tmp_path / "bad"
    code = run(
        "export",
        f"{models}:branchy",
        "--input",
        "x:2x6",
        "--dynamic-batch",
        "--format",
        "torchscript",
        "-o",
        out,
    )
    err = capsys.readouterr().err
    assert code == 1
    assert "parity failed" in err and "'output'" in err
    assert not out.exists()


@pytest.mark.parametrize(
    ("argv", "code", "message"),
    [
        (["export", "missing.py:build", "--input", "x:1x6"], 2, "missing.py: no such file"),
        (["export", "{models}:small", "--input", "x:1x7"], 2, "failed on inputs x[1, 7]"),
        (["export", "{models}:small", "--input", "x:1x6:complex"], 2, "unknown dtype 'complex'"),
        (
            ["export", "{models}:small", "--input", "x:1x6", "--format", "tflite"],
            2,
            "unknown format 'tflite'; valid: torchscript, onnx, exported-program",
        ),
        (["export", "{models}:small", "--input", "x:one"], 2, "must be integers joined by 'x'"),
        (["bench", "{tmp}/nothing.onnx"], 2, "nothing.onnx: no such file"),
        (["bench", "{tmp}/corrupt.onnx"], 2, "corrupt.onnx"),
        (["bench", "{tmp}/whole.pt"], 2, ""),
        (["bench", "{tmp}/m.onnx", "--runtime", "tvm"], 2, "unknown runtime 'tvm'; valid:"),
        (
            ["bench", "{tmp}/m.onnx", "--runtime", "ort-cuda"],
            3,
            "runtime 'ort-cuda' is not available",
        ),
        (["bench", "{tmp}/m.onnx", "--batch", "0"], 2, "--batch '0': values must be >= 1"),
        (["ship", "{tmp}/pipeline.toml"], 2, "cannot read the pipeline file"),
    ],
)
def test_bad_input_exit_codes(models, tmp_path, capsys, argv, code, message):
    (tmp_path / "corrupt.onnx").write_bytes(b"\x08\x07garbage")
    module = torch.nn.Linear(6, 3)
    torch.save(module, tmp_path / "whole.pt")
    torch.onnx.export(
        module, (torch.zeros(1, 6),), str(tmp_path / "m.onnx"), dynamo=False, input_names=["x"]
    )
    argv = [a.format(models=models, tmp=tmp_path) for a in argv]
    assert run(*argv) == code
    err = capsys.readouterr().err
    assert message in err
    assert "Traceback" not in err


def test_pickled_model_is_refused_with_exit_2(tmp_path, capsys):
    torch.save(torch.nn.Linear(6, 3), tmp_path / "whole.pt")
    assert run("export", tmp_path / "whole.pt", "--input", "x:1x6", "-o", tmp_path / "o") == 2
    assert "--trust-pickle" in capsys.readouterr().err


def test_bench_json_schema(models, tmp_path, capsys):
    out = tmp_path / "out"
    assert (
        run(
            "export",
            f"{models}:small",
            "--input",
            "x:2x6",
            "--dynamic-batch",
            "--format",
            "onnx",
            "-o",
            out,
        )
        == 0
    )
    report = tmp_path / "bench.json"
    code = run(
        "bench",
        out / "model.onnx",
        "--batch",
        "1,4",
        "--iters",
        "20",
        "--warmup",
        "2",
        "--json",
        report,
    )
    assert code == 0
    document = json.loads(report.read_text())
    assert document["schema"] == "torchship.bench/1"
    assert {"cpu_model", "isa"} <= set(document["machine"])
    assert {"python", "torch", "onnx", "onnxruntime", "torchship"} <= set(document["software"])
    assert [r["batch"] for r in document["results"]] == [1, 4]
    for result in document["results"]:
        assert result["runtime"] == "ort-cpu" and result["iters"] == 20
        assert len(result["samples_ms"]) == 20
        assert set(result["latency_ms"]) >= {
            "p50",
            "p90",
            "p95",
            "p99",
            "mean",
            "std",
            "min",
            "max",
            "cv",
        }
        assert result["cold_start_ms"] > 0 and result["peak_rss_mb"] > 0
    assert "torchship bench" in capsys.readouterr().out


def test_doctor_lists_runtimes_and_isa(capsys):
    assert run("doctor", "--json", "-") == 0
    facts = json.loads(capsys.readouterr().out)
    assert facts["runtimes"]["ort-cpu"]["available"] is True
    assert facts["runtimes"]["ort-cuda"]["available"] is False
    assert facts["runtimes"]["ort-cuda"]["reason"]
    assert "avx2" in facts["machine"]["isa"]


@pytest.mark.slow
def test_ship_demo_console_script(tmp_path):
    out = tmp_path / "demo"
    proc = subprocess.run(
        [sys.executable, "-m", "torchship", "ship", "-o", str(out), "--min-time", "0.2"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr
    assert "vs eager" in proc.stdout and "vs onnx" in proc.stdout
    for runtime in ("torch", "torchscript", "ort-cpu"):
        assert runtime in proc.stdout
    report = json.loads((out / "report.json").read_text())
    assert report["passed"] is True
    rows = {(r["name"], r["runtime"]): r for r in report["rows"]}
    assert rows[("eager", "torch")]["speedup_vs_eager"] == 1.0
    assert rows[("model.onnx", "ort-cpu")]["speedup_vs_onnx"] == 1.0
    names = {name for name, _ in rows}
    assert {"int8/model.int8.onnx", "pruned/model.onnx", "pruned/int8/model.int8.onnx"} <= names
    for row in report["rows"]:
        if "over budget" not in row["check"]:
            assert row["accuracy"] >= 0.97 and row["drop_points"] <= 1.0
    int8 = rows[("int8/model.int8.onnx", "ort-cpu")]
    assert int8["precision"] == "int8" and int8["check"].startswith("in budget")
    # the deployment search: its rows, its table, the release it names and why
    assert {("model.onnx", "openvino"), ("executorch/model.pte", "executorch")} <= set(rows)
    assert ("pruned/aoti/model.aoti.pt2", "aoti") in rows
    release = report["release"]
    assert rows[(release["artifact"], release["runtime"])]["check"].endswith("release")
    assert "release: " + release["artifact"] in " ".join(proc.stdout.split())
    search = json.loads((out / "tune_report.json").read_text())
    assert sum(c["outcome"] == "chosen" for c in search["candidates"]) == 1
    assert all(c["reason"] for c in search["candidates"] if c["outcome"] != "chosen")
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["release"] == release
    listed = {f["path"] for f in manifest["files"]}
    assert {"model.onnx", "model.ts", "model.pt2", "bench.json", "report.json"} <= listed
    assert {"tune_report.json", release["artifact"]} <= listed


def test_doctor_table_prints_brackets_as_text(capsys):
    """`pip install torchship[gpu]` must not be eaten as rich markup."""
    assert run("doctor") == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "torchship[gpu]" in out


def test_output_under_a_file_is_a_config_error(models, tmp_path, capsys):
    (tmp_path / "x.py").write_text("")
    code = run("export", f"{models}:small", "--input", "x:2x6", "-o", tmp_path / "x.py" / "sub")
    err = capsys.readouterr().err
    assert code == 2 and "cannot create the output folder" in err and "internal error" not in err


def test_export_into_an_earlier_export_removes_its_stale_artifacts(models, tmp_path, capsys):
    out = tmp_path / "out"
    assert run("export", f"{models}:small", "--input", "x:2x6", "-o", out) == 0
    assert (out / "model.pt2").is_file()
    (out / "notes.txt").write_text("not ours")  # unlisted: left alone
    assert run("export", f"{models}:small", "--input", "x:2x6", "--format", "onnx", "-o", out) == 0
    assert not (out / "model.pt2").exists() and not (out / "model.ts").exists()
    assert (out / "notes.txt").is_file()
    (out / "notes.txt").unlink()
    capsys.readouterr()
    assert run("verify", out) == 0, capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["export", "{models}:small", "--input", "x:2x6", "--opset", "3"], "--opset 3: not a"),
        (["prune", "demo", "--batch", "0", "--target-speedup", "2"], "--batch 0: must be >= 1"),
        (["prune", "{tmp}/whole.pt", "--input", "x:2x6", "--trust-pickle"], "no prunable layers"),
        (["prune", "{tmp}/whole.pt", "--input", "x:2x6"], "--trust-pickle"),
    ],
)
def test_prune_and_export_flag_errors(models, tmp_path, capsys, argv, message):
    torch.save(torch.nn.Linear(6, 3), tmp_path / "whole.pt")
    argv = [a.format(models=models, tmp=tmp_path) for a in argv]
    assert run(*argv, "-o", tmp_path / "o") == 2
    err = capsys.readouterr().err
    assert message in err and "internal error" not in err


def test_prune_of_a_pt2_says_to_prune_the_source(models, tmp_path, capsys):
    out = tmp_path / "out"
    code = run("export", f"{models}:small", "--input", "x:2x6", "--format", "exported-program",
               "-o", out)  # fmt: skip
    assert code == 0
    assert run("prune", out / "model.pt2", "-o", tmp_path / "p") == 2
    assert "prune the original model source" in capsys.readouterr().err


@pytest.mark.parametrize(
    "manifest",
    ["[]", '{"artifacts": [{"path": "m.onnx", "inputs": [{"name": "x", "dtype": "float32"}]}]}'],
)
def test_bench_with_a_malformed_manifest_names_it(tmp_path, capsys, manifest):
    module = torch.nn.Linear(6, 3)
    torch.onnx.export(
        module, (torch.zeros(1, 6),), str(tmp_path / "m.onnx"), dynamo=False, input_names=["x"]
    )
    (tmp_path / "manifest.json").write_text(manifest)
    assert run("bench", tmp_path / "m.onnx", "--iters", "2") == 2
    err = capsys.readouterr().err
    assert "manifest.json" in err and "internal error" not in err
