"""The pytest plugin, used from a throwaway test project through `pytester`."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from torchship.cli.main import main
from torchship.runtimes import BenchDocument, BenchResult

pytest_plugins = ["pytester"]


@pytest.fixture
def project(pytester, mlp_models, tmp_path):
    """A test project with the two models and a baseline of `light` saved as `main`."""
    root = tmp_path / "baselines"
    light, heavy = mlp_models["light"], mlp_models["heavier"]
    argv = ["bench", str(light), "--iters", "60", "--warmup", "5", "--threads", "1"]
    assert main([*argv, "--baseline-dir", str(root), "--save-baseline", "main", "--json", "-"]) == 0
    pytester.makepyfile(
        test_latency=f"""
        import pytest

        LIGHT, HEAVY = {str(light)!r}, {str(heavy)!r}

        @pytest.mark.latency
        def test_budget_ok(torchship_latency):
            result = torchship_latency.assert_budget(LIGHT, p90_ms=10_000, threads=1)
            assert result.runtime == "ort-cpu"

        def test_budget_missed(torchship_latency):
            torchship_latency.assert_budget(HEAVY, p50_ms=1e-6, threads=1)

        def test_no_regression(torchship_latency):
            torchship_latency.assert_no_regression(
                LIGHT, baseline="main", threshold_pct=900, threads=1  # separate runs: mechanics
            )

        def test_regression(torchship_latency):
            torchship_latency.assert_no_regression(HEAVY, baseline="main", threads=1)

        def test_unavailable_runtime_skips(torchship_latency, monkeypatch):
            from torchship.runtimes import get_runner

            cls = get_runner("ort-trt")
            monkeypatch.setattr(cls, "unavailable_reason", classmethod(lambda c: "no GPU here"))
            torchship_latency.assert_budget(LIGHT, p90_ms=1, runtime="ort-trt")
        """
    )
    return root


def test_plugin_passes_fails_and_skips(pytester, project):
    result = pytester.runpytest(
        "-p", "no:cacheprovider", "--torchship-min-time", "0.2",
        "--torchship-baselines", str(project), "-rs",
    )  # fmt: skip
    result.assert_outcomes(passed=2, failed=2, skipped=1)
    result.stdout.fnmatch_lines(
        [
            "*heavier.onnx on ort-cpu: p50 * ms > budget 1e-06 ms*",
            "*heavier.onnx on ort-cpu is slower than baseline main*",
            "*runtime ort-trt is not available: no GPU here*",
        ]
    )


def test_marker_is_registered(pytester):
    result = pytester.runpytest("--markers")
    result.stdout.fnmatch_lines(["*latency: a torchship latency budget or regression test*"])


def test_an_inconclusive_check_fails(mlp_models, tmp_path, capsys):
    """5 baseline samples cannot decide anything: that must not read as a pass."""
    from torchship.pytest_plugin import LatencyChecker

    root, light = str(tmp_path / "baselines"), str(mlp_models["light"])
    argv = ["bench", light, "--iters", "5", "--warmup", "1", "--threads", "1", "--json", "-"]
    assert main([*argv, "--baseline-dir", root, "--save-baseline", "few"]) == 0
    capsys.readouterr()
    checker = LatencyChecker(min_time_s=1e-6, baselines=root)
    with pytest.raises(pytest.fail.Exception, match="inconclusive: 5 baseline samples, need 20"):
        checker.assert_no_regression(light, baseline="few", threads=1)


def test_measure_times_at_least_min_samples(mlp_models):
    from torchship.pytest_plugin import LatencyChecker

    checker = LatencyChecker(min_time_s=1e-6, baselines=None)
    result = checker.measure(mlp_models["light"], threads=1, min_samples=25)
    assert len(result.samples_ms) >= 25


def test_baseline_rows_are_matched_on_the_artifact_too():
    from torchship.pytest_plugin import _matching_row

    def row(artifact: str) -> BenchResult:
        return BenchResult(
            runtime="ort-cpu", precision="fp32", batch=1, artifact=artifact, sha256="0" * 64,
            latency_ms={}, samples_ms=[],
        )  # fmt: skip

    def doc(*artifacts: str) -> BenchDocument:
        return BenchDocument(results=tuple(row(a) for a in artifacts))

    result = SimpleNamespace(runtime="ort-cpu", precision="fp32", batch=1, artifact="b/heavy.onnx")
    document = doc("a/light.onnx", "a/heavy.onnx")
    assert _matching_row(document, result, baseline="main").artifact == "a/heavy.onnx"
    assert _matching_row(doc("light.onnx"), result, baseline="main")
    twice = doc("a/heavy.onnx", "c/heavy.onnx")
    with pytest.raises(pytest.fail.Exception, match="several rows .* a/heavy.onnx, c/heavy.onnx"):
        _matching_row(twice, result, baseline="main")
    with pytest.raises(pytest.fail.Exception, match="no row for heavy.onnx on ort-cpu/fp32/b"):
        _matching_row(doc("x.onnx", "y.onnx"), result, baseline="main")
