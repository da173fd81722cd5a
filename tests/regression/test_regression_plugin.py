"""The pytest plugin, used from a throwaway test project through `pytester`."""

from __future__ import annotations

import pytest

from torchship.cli import main

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
                LIGHT, baseline="main", threshold_pct=100, threads=1
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
