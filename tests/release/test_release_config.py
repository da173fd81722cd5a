# ruff: noqa: E501 - the table of bad configs reads best one case per line
from __future__ import annotations

import pytest

from torchship.cli.main import main
from torchship.errors import ConfigError
from torchship.pipeline import EXAMPLE_CONFIG, STEPS, load_pipeline, parse_pipeline

HEAD = '[pipeline]\nname = "demo"\nversion = "1.0"\n'


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (HEAD + '[model]\nsource = "demo"\ncolour = "red"\n', r":6: \[model\] colour: unknown key 'colour'; valid: source"),
        (HEAD + '[model]\nsource = "demo"\n[bench]\nbatches = "8"\n', r":7: \[bench\] batches: expected an array, got string '8'"),
        (HEAD + '[model]\nsource = "demo"\n[bench]\nbatches = [8, "x"]\n', r"\[bench\] batches\[1\]: expected int, got string 'x'"),
        (HEAD + '[model]\nsource = 3\n', r":5: \[model\] source: expected str, got integer 3"),
        (HEAD, r"missing the \[model\] table"),
        (HEAD + '[model]\nweights = "w.pt"\n', r":4: \[model\] source: is required"),
        (HEAD + '[model]\nsource = "demo"\n[export]\nformats = ["onnx", "tflite"]\n', r"\[export\] formats\[1\]: unknown format 'tflite'"),
        (HEAD + '[model]\nsource = "demo"\n[bench]\nruntimes = ["nope"]\n', r"\[bench\] runtimes\[0\]: unknown runtime 'nope'"),
        (HEAD + '[model]\nsource = "demo"\n[gates]\nmax_p90_ms = -1\n', r"\[gates\] max_p90_ms: must be >= 0"),
        (HEAD + '[model]\nsource = "demo"\n[prune]\nratio = 1.5\n', r"\[prune\] ratio: must be in \(0, 1\)"),
        ('[pipeline]\nname = "a/b"\nversion = "1"\n[model]\nsource = "demo"\n', r":2: \[pipeline\] name: 'a/b' must be letters"),
        ('[pipeline]\nname = "a"\nversion = "1"\nowner = "me"\n', r":4: owner: unknown key 'owner'|\[pipeline\] owner: unknown key"),
        ("[pipeline\n", "not valid TOML"),
        (HEAD + '[model]\nsource = "demo"\n[bench]\nmin_time_s = nan\n', r":7: \[bench\] min_time_s: must be a finite number, got nan"),
        (HEAD + '[model]\nsource = "demo"\n[gates]\nbaseline = "main"\nthreshold_pct = 5000\n', r":8: \[gates\] threshold_pct: .*5000"),
        ('[pipeline]\nname = "demo\\n"\nversion = "1"\n[model]\nsource = "demo"\n', r":2: \[pipeline\] name: 'demo\\n' must be letters"),
        (HEAD + '[model]\nsource = "demo"\n[engines]\nprecisions = ["int4"]\n', r"\[engines\] precisions\[0\]: unknown precision 'int4'"),
    ],
)  # fmt: skip
def test_validation_names_key_and_line(body, message):
    with pytest.raises(ConfigError, match=message):
        parse_pipeline(body)


def test_unavailable_step_is_a_config_error(monkeypatch):
    monkeypatch.setitem(STEPS._items, "engines", ("torchship.no_such_module", "build_engine"))
    body = HEAD + '[model]\nsource = "demo"\n[engines]\nprecisions = ["fp16"]\n'
    with pytest.raises(
        ConfigError, match=r":6: \[engines\].*step 'engines' is not available in this build"
    ):
        parse_pipeline(body)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (HEAD + '[model]\nsource = "demo"\nfoo = 1\n', "unknown key 'foo'"),
        (HEAD + '[model]\nsource = "demo"\n[bench]\nmin_time_s = "fast"\n', "expected float"),
        (HEAD, "missing the [model] table"),
    ],
)
def test_ship_with_a_bad_config_exits_2(tmp_path, capsys, pipeline_file, body, message):
    path = pipeline_file(tmp_path, text=body)
    assert main(["ship", str(path)]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not (tmp_path / "dist").exists()


def test_missing_file_exits_2(tmp_path, capsys):
    assert main(["ship", str(tmp_path / "nope.toml")]) == 2
    assert "cannot read the pipeline file" in capsys.readouterr().err


def test_init_writes_a_valid_commented_example(tmp_path, capsys):
    path = tmp_path / "pipeline.toml"
    assert main(["init", str(path)]) == 0
    assert path.read_text() == EXAMPLE_CONFIG and "# demo | pkg.module:factory" in EXAMPLE_CONFIG
    config = load_pipeline(path)
    assert config.bundle_dir == tmp_path / "dist" / "demo-0.1.0"
    assert config.gates.max_accuracy_drop == 0.5 and config.bench.batches == (8,)
    assert main(["init", str(path)]) == 2
    assert "exists; pass --force" in capsys.readouterr().err
    assert main(["init", str(path), "--force"]) == 0
