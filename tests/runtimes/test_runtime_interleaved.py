from __future__ import annotations

import warnings

import pytest
import torch

from torchship.artifact import Artifact, Format
from torchship.errors import ConfigError
from torchship.runtimes import interleaved
from torchship.runtimes.interleaved import interleaved_ab
from torchship.specs import InputSpec

SPEC = InputSpec(name="x", dtype="float32", shape=(2, 4), dynamic={0: "batch"})


@pytest.fixture(scope="module")
def heavy_onnx(tmp_path_factory) -> Artifact:
    """Same I/O as the tiny model, ~100x the arithmetic."""
    torch.manual_seed(0)
    layers = [torch.nn.Linear(4, 256), *(torch.nn.Linear(256, 256) for _ in range(12))]
    module = torch.nn.Sequential(*layers, torch.nn.Linear(256, 3)).eval()
    path = tmp_path_factory.mktemp("heavy") / "heavy.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module, (torch.randn(2, 4),), str(path), dynamo=False, input_names=["x"],
            output_names=["y"], dynamic_axes={"x": {0: "batch"}, "y": {0: "batch"}},
        )  # fmt: skip
    return Artifact.create(path, format=Format.ONNX, inputs=[SPEC], outputs=["y"])


def test_slower_b_reads_slower(tiny_artifacts, heavy_onnx):
    result = interleaved_ab(
        tiny_artifacts[Format.ONNX], heavy_onnx, batch=8, threads=1, rounds=4, iters_per_round=20
    )
    assert result.runtime == "ort-cpu" and result.batch == 8
    assert len(result.round_ratios) == 4
    assert result.ratio > 2
    assert result.b_slower(threshold_pct=5)
    data = result.to_dict()
    assert data["ratio_b_over_a"] == pytest.approx(result.ratio, rel=1e-3)
    assert data["b"]["latency_ms"]["p50"] > data["a"]["latency_ms"]["p50"]


def test_same_model_reads_even(heavy_onnx):
    result = interleaved_ab(heavy_onnx, heavy_onnx, threads=1, rounds=4, iters_per_round=20)
    assert 0.75 < result.ratio < 1.33
    assert not result.b_slower(threshold_pct=50)


def test_torch_runtimes_take_part(tiny_artifacts):
    ts = tiny_artifacts[Format.TORCHSCRIPT]
    result = interleaved_ab(ts, ts, rounds=2, iters_per_round=3, warmup=0)
    assert result.runtime == "torchscript" and result.batch == 2


def test_bad_counts_are_refused(tiny_artifacts):
    onnx = tiny_artifacts[Format.ONNX]
    with pytest.raises(ConfigError, match="rounds >= 2"):
        interleaved_ab(onnx, onnx, rounds=1)


def test_b_must_take_the_batch(tiny_artifacts, fixed_batch_onnx):
    with pytest.raises(ConfigError, match="axis 0 is fixed at 2"):
        interleaved_ab(tiny_artifacts[Format.ONNX], fixed_batch_onnx, batch=8, rounds=2)


def test_negative_threshold_is_refused(tiny_artifacts):
    onnx = tiny_artifacts[Format.ONNX]
    result = interleaved_ab(onnx, onnx, rounds=2, iters_per_round=2, warmup=0)
    with pytest.raises(ConfigError, match="threshold must be >= 0"):
        result.b_slower(threshold_pct=-1)


def test_only_one_side_is_open_at_a_time_and_order_alternates():
    import contextlib

    from torchship.runtimes.interleaved import interleaved_rounds

    events, open_now = [], []

    def side(name):
        @contextlib.contextmanager
        def session():
            assert not open_now, f"{name} opened while {open_now} is open"
            open_now.append(name)
            events.append(name)
            try:
                yield lambda: None
            finally:
                open_now.remove(name)

        return session

    samples = interleaved_rounds(
        {"a": side("a"), "b": side("b")}, rounds=4, iters_per_round=3, warmup=1
    )
    assert events == ["a", "b", "b", "a", "a", "b", "b", "a"]
    assert [len(r) for r in samples["a"]] == [3, 3, 3, 3]


def test_runtime_b_compares_two_runtimes(tiny_artifacts):
    onnx, ts = tiny_artifacts[Format.ONNX], tiny_artifacts[Format.TORCHSCRIPT]
    result = interleaved_ab(onnx, ts, rounds=2, iters_per_round=3, warmup=0)
    assert (result.runtime, result.runtime_b) == ("ort-cpu", "torchscript")
    assert len(result.a_rounds) == len(result.b_rounds) == 2
    assert result.to_dict()["runtime_b"] == "torchscript"


def test_zero_batch_is_refused(tiny_artifacts):
    onnx = tiny_artifacts[Format.ONNX]
    with pytest.raises(ConfigError, match="batch must be >= 1"):
        interleaved_ab(onnx, onnx, batch=0)


class _FixedTimer:
    """Stands in for a runner's own timer (CUDA events on its stream on a GPU)."""

    clock = "fixed"

    def __init__(self, runner, ms):
        self.runner, self.ms = runner, ms

    def time_call(self, fn):
        fn()
        return self.ms


def test_each_side_is_timed_by_its_own_runner_timer(tiny_artifacts, monkeypatch):
    timers = []

    def runner_timer(runner):
        timers.append(_FixedTimer(runner, 2.0 if runner.name == "torchscript" else 1.0))
        return timers[-1]

    monkeypatch.setattr(interleaved, "runner_timer", runner_timer)
    onnx, ts = tiny_artifacts[Format.ONNX], tiny_artifacts[Format.TORCHSCRIPT]
    result = interleaved_ab(onnx, ts, rounds=2, iters_per_round=3, warmup=0)
    assert [t.runner.name for t in timers] == ["ort-cpu", "torchscript", "torchscript", "ort-cpu"]
    assert len({id(t.runner) for t in timers}) == 4  # a timer per loaded runner
    assert result.a_rounds == ((1.0,) * 3,) * 2 and result.b_rounds == ((2.0,) * 3,) * 2
    assert result.ratio == 2.0 and result.to_dict()["clock"] == "host-wall"


def test_sides_on_different_clocks_are_both_host_timed(tiny_artifacts, monkeypatch):
    monkeypatch.setattr(interleaved, "runner_timer", lambda runner: _FixedTimer(runner, 1.0))
    monkeypatch.setattr(
        interleaved,
        "_clock_of",
        lambda cls: "cuda-event" if cls.name == "torchscript" else "host-wall",
    )
    onnx, ts = tiny_artifacts[Format.ONNX], tiny_artifacts[Format.TORCHSCRIPT]
    result = interleaved_ab(onnx, ts, rounds=2, iters_per_round=3, warmup=0)
    assert result.clock == "host-wall"
    assert 1.0 not in {s for r in result.a_rounds + result.b_rounds for s in r}


def test_given_feeds_set_the_batch_and_round_s_sets_the_calls(tiny_artifacts, heavy_onnx):
    import numpy as np

    feeds = {"x": np.ones((5, 4), np.float32)}
    result = interleaved_ab(
        tiny_artifacts[Format.ONNX], heavy_onnx, feeds=feeds, rounds=2, iters_per_round=7,
        round_s=10.0, warmup=0,
    )  # fmt: skip
    assert result.batch == 5
    assert all(len(r) == 7 for r in result.a_rounds + result.b_rounds)  # capped by the most
    quick = interleaved_ab(
        heavy_onnx, heavy_onnx, feeds=feeds, rounds=2, iters_per_round=50, round_s=1e-6
    )
    assert all(len(r) == 3 for r in quick.a_rounds)  # at least 3 calls a round
