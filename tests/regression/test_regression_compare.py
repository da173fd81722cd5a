from __future__ import annotations

import json
import xml.etree.ElementTree as ET

import numpy as np
import pytest

from torchship.baselines import find_baseline, load_baseline, save_baseline
from torchship.cli import main
from torchship.errors import ConfigError
from torchship.regression_report import compare_documents, comparison_junit, comparison_markdown

RNG = np.random.default_rng(0)
BASE = 10 * np.exp(RNG.normal(0, 0.05, 200))
SAME = 10 * np.exp(RNG.normal(0, 0.05, 200))


def bench_doc(samples: dict[tuple[str, str, int], list[float]], *, fingerprint: str) -> dict:
    """A minimal torchship.bench/1 document with the given raw samples per row."""
    results = []
    for (runtime, precision, batch), values in samples.items():
        p50 = float(np.median(values))
        results.append(
            {
                "runtime": runtime, "artifact": f"model-{precision}.onnx", "sha256": "0" * 64,
                "precision": precision, "batch": batch, "latency_ms": {"p50": p50},
                "samples_ms": list(values),
            }
        )  # fmt: skip
    return {"schema": "torchship.bench/1", "fingerprint": fingerprint, "results": results}


def docs(slowdown: float, *, fingerprint: str = "fp-b"):
    base = bench_doc(
        {("ort-cpu", "fp32", 1): BASE, ("ort-cpu", "int8", 1): BASE}, fingerprint="fp-a"
    )
    cand = bench_doc(
        {("ort-cpu", "fp32", 1): SAME, ("ort-cpu", "int8", 1): SAME * slowdown},
        fingerprint=fingerprint,
    )
    return base, cand


def test_rows_get_their_own_verdicts():
    base, cand = docs(1.3, fingerprint="fp-a")
    result = compare_documents(base, cand)
    verdicts = {r.key: r.verdict for r in result.rows}
    assert verdicts == {
        ("ort-cpu", "fp32", "batch 1"): "same",
        ("ort-cpu", "int8", "batch 1"): "slower",
    }
    assert not result.passed and result.fingerprints_match


def test_renderings_agree(tmp_path):
    result = compare_documents(*docs(1.3))
    markdown = comparison_markdown(result)
    assert "**latency regression**" in markdown and "slower :x:" in markdown
    assert "different machines" in markdown
    suite = ET.fromstring(comparison_junit(result))
    assert suite.get("failures") == "1" and suite.get("tests") == "2"
    assert json.loads(json.dumps(result.to_dict()))["rows"][1]["verdict"] == "slower"


def test_missing_rows_are_reported_not_judged():
    base, cand = docs(1.0)
    cand["results"] = cand["results"][:1]
    result = compare_documents(base, cand)
    assert [r.verdict for r in result.rows] == ["same", "missing in candidate"]
    assert result.passed
    cand["results"] = []
    with pytest.raises(ConfigError, match="no \\(runtime, precision, batch\\) row"):
        compare_documents(base, cand)


def test_different_fingerprints_warn_or_refuse(caplog):
    base, cand = docs(1.0)
    compare_documents(base, cand)
    assert "fingerprint fp-a differs from candidate fp-b" in caplog.text
    with pytest.raises(ConfigError, match="refusing under --strict"):
        compare_documents(base, cand, strict=True)


def test_baselines_are_filed_by_fingerprint(tmp_path, caplog):
    base, _ = docs(1.0)
    path = save_baseline(base, "main", root=tmp_path)
    assert path == tmp_path / "fp-a" / "main.json"
    assert find_baseline("main", root=tmp_path, fingerprint="fp-a") == path
    assert load_baseline("main", root=tmp_path)["fingerprint"] == "fp-a"  # another machine: warns
    assert "recorded under fingerprint fp-a" in caplog.text
    with pytest.raises(ConfigError, match="refusing under --strict"):
        find_baseline("main", root=tmp_path, fingerprint="fp-x", strict=True)
    with pytest.raises(ConfigError, match="no baseline named 'nope'.*known: main"):
        find_baseline("nope", root=tmp_path)
    with pytest.raises(ConfigError, match="baseline name '../x'"):
        save_baseline(base, "../x", root=tmp_path)


def write_docs(tmp_path, slowdown: float):
    base, cand = docs(slowdown, fingerprint="fp-a")
    (tmp_path / "base.json").write_text(json.dumps(base))
    (tmp_path / "cand.json").write_text(json.dumps(cand))
    return str(tmp_path / "base.json"), str(tmp_path / "cand.json")


def test_compare_cli_exit_codes_and_outputs(tmp_path, capsys):
    base, cand = write_docs(tmp_path, 1.0)
    assert main(["compare", base, cand]) == 0
    assert "no regression" in capsys.readouterr().out
    base, cand = write_docs(tmp_path, 1.3)
    junit, md = tmp_path / "r.xml", tmp_path / "r.md"
    argv = ["compare", base, cand, "--junit", str(junit), "--markdown", str(md)]
    assert main(argv) == 1
    assert "regression: ort-cpu / int8 / batch 1" in capsys.readouterr().out
    assert ET.parse(junit).getroot().get("failures") == "1" and "slower" in md.read_text()
    assert main(["compare", base, cand, "--threshold", "50"]) == 0
    capsys.readouterr()
    assert main(["compare", base, cand, "--json", "-"]) == 1
    assert json.loads(capsys.readouterr().out)["passed"] is False


def test_compare_cli_bad_input_exits_2(tmp_path, capsys):
    (tmp_path / "bad.json").write_text("{}")
    assert main(["compare", str(tmp_path / "bad.json"), str(tmp_path / "bad.json")]) == 2
    assert "schema None found" in capsys.readouterr().err
    assert main(["compare", "nosuch", "other", "--baseline-dir", str(tmp_path)]) == 2
    assert "no baseline named 'nosuch'" in capsys.readouterr().err


def test_bench_save_baseline_then_compare(mlp_models, tmp_path, capsys):
    root = str(tmp_path / "baselines")
    light = str(mlp_models["light"])
    common = ["--iters", "40", "--warmup", "3", "--baseline-dir", root]
    assert main(["bench", light, *common, "--save-baseline", "main"]) == 0
    assert "baseline 'main' saved to" in capsys.readouterr().out
    assert main(["bench", light, *common, "--save-baseline", "pr"]) == 0
    assert main(["compare", "main", "pr", "--baseline-dir", root, "--threshold", "50"]) == 0
    assert "ort-cpu / fp32 / batch 1" in capsys.readouterr().out
