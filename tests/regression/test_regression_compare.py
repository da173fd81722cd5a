from __future__ import annotations

import json
import os
import xml.etree.ElementTree as ET

import numpy as np
import pytest

from torchship.cli.main import main
from torchship.errors import ConfigError
from torchship.regression.baselines import find_baseline, load_baseline, save_baseline
from torchship.regression.documents import compare_documents, comparison_junit, comparison_markdown
from torchship.runtimes import BenchDocument

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


def typed(document: dict) -> BenchDocument:
    """The JSON document as the library reads it (as `load_bench_document` returns it)."""
    return BenchDocument.from_dict(document)


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
    result = compare_documents(typed(base), typed(cand))
    verdicts = {r.key: r.verdict for r in result.rows}
    assert verdicts == {
        ("ort-cpu", "fp32", "batch 1"): "same",
        ("ort-cpu", "int8", "batch 1"): "slower",
    }
    assert not result.passed and result.fingerprints_match


def test_renderings_agree(tmp_path):
    result = compare_documents(*map(typed, docs(1.3)))
    markdown = comparison_markdown(result)
    assert "**latency regression**" in markdown and "slower :x:" in markdown
    assert "different machines" in markdown
    suite = ET.fromstring(comparison_junit(result))
    assert suite.get("failures") == "1" and suite.get("tests") == "2"
    assert json.loads(json.dumps(result.to_dict()))["rows"][1]["verdict"] == "slower"


def test_missing_rows_are_reported_not_judged():
    base, cand = docs(1.0)
    cand["results"] = cand["results"][:1]
    result = compare_documents(typed(base), typed(cand))
    assert [r.verdict for r in result.rows] == ["same", "missing in candidate"]
    assert result.passed
    cand["results"] = []
    with pytest.raises(ConfigError, match="no \\(runtime, precision, batch\\) row"):
        compare_documents(typed(base), typed(cand))


def test_different_fingerprints_warn_or_refuse(caplog):
    base, cand = docs(1.0)
    compare_documents(typed(base), typed(cand))
    assert "fingerprint fp-a differs from candidate fp-b" in caplog.text
    with pytest.raises(ConfigError, match="refusing under --strict"):
        compare_documents(typed(base), typed(cand), strict=True)


def test_baselines_are_filed_by_fingerprint(tmp_path, caplog):
    base, _ = docs(1.0)
    path = save_baseline(typed(base), "main", root=tmp_path)
    assert path == tmp_path / "fp-a" / "main.json"
    assert find_baseline("main", root=tmp_path, fingerprint="fp-a") == path
    assert load_baseline("main", root=tmp_path).fingerprint == "fp-a"  # another machine: warns
    assert "recorded under fingerprint fp-a" in caplog.text
    with pytest.raises(ConfigError, match="refusing under --strict"):
        find_baseline("main", root=tmp_path, fingerprint="fp-x", strict=True)
    with pytest.raises(ConfigError, match="no baseline named 'nope'.*known: main"):
        find_baseline("nope", root=tmp_path)
    with pytest.raises(ConfigError, match="baseline name '../x'"):
        save_baseline(typed(base), "../x", root=tmp_path)


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
    # two separate runs of one tiny model (~20 us) once differed by more than 50% in CI: this
    # test is about the save/compare mechanics, so only a 10x change may count as a regression
    assert main(["compare", "main", "pr", "--baseline-dir", root, "--threshold", "900"]) == 0
    assert "ort-cpu / fp32 / batch 1" in capsys.readouterr().out


def row(runtime: str, artifact: str, values, *, precision: str = "fp32", batch: int = 1) -> dict:
    return {
        "runtime": runtime, "artifact": artifact, "sha256": "0" * 64, "precision": precision,
        "batch": batch, "latency_ms": {"p50": float(np.median(values))},
        "samples_ms": [float(v) for v in values],
    }  # fmt: skip


def doc(*rows: dict, fingerprint: str = "fp-a") -> dict:
    return {"schema": "torchship.bench/1", "fingerprint": fingerprint, "results": list(rows)}


def test_pipeline_bench_json_matches_a_plain_bench_document():
    """eager and model.pt2 both run as torch/fp32: only those rows need the artifact."""
    plain = doc(row("ort-cpu", "dist/model.onnx", BASE))
    pipeline = doc(
        row("torch", "<eager>", SAME), row("torch", "model.pt2", SAME),
        row("ort-cpu", "model.onnx", SAME * 1.3),
    )  # fmt: skip
    verdicts = {r.key: r.verdict for r in compare_documents(typed(plain), typed(pipeline)).rows}
    assert verdicts == {
        ("ort-cpu", "fp32", "batch 1"): "slower",
        ("torch", "fp32", "batch 1", "<eager>"): "missing in baseline",
        ("torch", "fp32", "batch 1", "model.pt2"): "missing in baseline",
    }


def test_same_file_name_in_two_folders_keeps_two_rows():
    base = doc(row("ort-cpu", "new/model.onnx", BASE), row("ort-cpu", "old/model.onnx", BASE))
    cand = doc(row("ort-cpu", "new/model.onnx", SAME * 3), row("ort-cpu", "old/model.onnx", SAME))
    verdicts = {r.key[-1]: r.verdict for r in compare_documents(typed(base), typed(cand)).rows}
    assert verdicts == {"new/model.onnx": "slower", "old/model.onnx": "same"}


def test_two_rows_with_one_key_are_refused():
    twice = doc(row("ort-cpu", "model.onnx", BASE), row("ort-cpu", "model.onnx", SAME))
    with pytest.raises(ConfigError, match="candidate document: two rows for .*/ model.onnx"):
        compare_documents(typed(doc(row("ort-cpu", "model.onnx", BASE))), typed(twice))


@pytest.mark.parametrize("samples", [["a", "b"], [[1.0, 2.0], [3.0]], None, {"x": 1}])
def test_samples_that_are_not_numbers_are_bad_input(samples):
    bad = doc(row("ort-cpu", "model.onnx", BASE))
    bad["results"][0]["samples_ms"] = samples
    with pytest.raises(ConfigError, match="row ort-cpu / fp32 / batch 1: candidate: latency"):
        compare_documents(typed(doc(row("ort-cpu", "model.onnx", BASE))), typed(bad))


def test_inconclusive_rows_are_valid_json_and_said_so(tmp_path, capsys):
    base, cand = doc(row("ort-cpu", "m.onnx", BASE[:5])), doc(row("ort-cpu", "m.onnx", SAME[:5]))
    result = compare_documents(typed(base), typed(cand))
    text = json.dumps(result.to_dict(), allow_nan=False)  # NaN is not JSON
    assert json.loads(text)["rows"][0]["ci"] == [None, None]
    assert "inconclusive, fewer than 20 samples" in comparison_markdown(result)
    assert ET.fromstring(comparison_junit(result)).get("skipped") == "1"
    (tmp_path / "b.json").write_text(json.dumps(base))
    (tmp_path / "c.json").write_text(json.dumps(cand))
    assert main(["compare", str(tmp_path / "b.json"), str(tmp_path / "c.json")]) == 0
    out = capsys.readouterr().out
    assert "inconclusive (not judged): ort-cpu / fp32 / batch 1: fewer than 20 samples" in out
    assert main(["compare", str(tmp_path / "b.json"), str(tmp_path / "c.json"), "--json", "-"]) == 0
    assert json.loads(capsys.readouterr().out)["rows"][0]["verdict"] == "inconclusive"


def test_writing_onto_a_directory_is_bad_input(tmp_path, capsys):
    base, cand = write_docs(tmp_path, 1.0)
    (tmp_path / "out").mkdir()
    assert main(["compare", base, cand, "--json", str(tmp_path / "out")]) == 2
    assert "out: is a directory" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["base.json", "cand.json", "out"]
    assert not any((tmp_path / "out").iterdir())


def test_baseline_names_and_fingerprints_are_checked_in_full(tmp_path):
    base, _ = docs(1.0)
    with pytest.raises(ConfigError, match="baseline name 'main\\\\n'"):
        save_baseline(typed(base), "main\n", root=tmp_path)
    with pytest.raises(ConfigError, match="fingerprint '../../evil'"):
        save_baseline(typed({**base, "fingerprint": "../../evil"}), "main", root=tmp_path)
    assert not any(tmp_path.iterdir())


def test_a_folder_named_like_the_baseline_is_not_read_as_a_file(tmp_path, monkeypatch):
    base, _ = docs(1.0)
    save_baseline(typed(base), "main", root=tmp_path / "baselines")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "main").mkdir()
    assert load_baseline("main", root=tmp_path / "baselines").fingerprint == "fp-a"


def test_the_newest_baseline_of_another_fingerprint_is_used(tmp_path, caplog):
    base, _ = docs(1.0)
    older = save_baseline(typed({**base, "fingerprint": "zz-old"}), "main", root=tmp_path)
    newer = save_baseline(typed({**base, "fingerprint": "aa-new"}), "main", root=tmp_path)
    os.utime(older, (1_000_000, 1_000_000))
    assert find_baseline("main", root=tmp_path, fingerprint="fp-x") == newer
    assert "recorded under fingerprint aa-new (the newest of 2)" in caplog.text
