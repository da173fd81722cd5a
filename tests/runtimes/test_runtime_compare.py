"""The comparator: a candidate against a stored, runner or callable reference, per output."""

from __future__ import annotations

import math

import numpy as np
import pytest

from torchship.artifact import Artifact, Format
from torchship.errors import ConfigError, ParityError
from torchship.runtimes import compare_runs, get_runner
from torchship.runtimes.base import Runner
from torchship.runtimes.compare import CaseResult
from torchship.runtimes.tolerance import tolerance_for

FP32 = tolerance_for("fp32")
INT8 = tolerance_for("int8")


class Scripted(Runner):
    """A runner whose outputs are what the test computes from the feeds."""

    name = "scripted"
    formats = (Format.ONNX,)

    def __init__(self, artifact: Artifact, compute) -> None:
        super().__init__(artifact)
        self.compute = compute

    @classmethod
    def unavailable_reason(cls) -> str | None:
        return None

    def _load(self) -> None:
        pass

    def _infer(self, feeds):
        return self.compute(feeds)


@pytest.fixture
def scripted(tiny_artifacts):
    """Loaded Scripted runners on the tiny ONNX artifact: `scripted(compute)`."""
    runners = []

    def make(compute) -> Scripted:
        runners.append(Scripted(tiny_artifacts[Format.ONNX], compute).load())
        return runners[-1]

    yield make
    for runner in runners:
        runner.close()


def feeds(batch: int, seed: int) -> dict[str, np.ndarray]:
    return {"x": np.random.default_rng(seed).standard_normal((batch, 4)).astype(np.float32)}


def zeros_y(f):
    """Zeros of the tiny model's output shape for feeds `f`."""
    return np.zeros((f["x"].shape[0], 3), np.float32)


def eager(tiny_module, eager_output):
    return lambda f: {"y": eager_output(tiny_module, f["x"])}


def test_stored_reference_outputs(tiny_artifacts, tiny_module, eager_output):
    onnx = tiny_artifacts[Format.ONNX]
    run = eager(tiny_module, eager_output)
    inputs = [feeds(2, 0), feeds(5, 1)]
    cases = [(f"case {i}", f, run(f)) for i, f in enumerate(inputs)]
    report = compare_runs(onnx, cases, runtime="ort-cpu", profile=FP32)
    assert report.passed and (report.artifact, report.runtime) == ("tiny.onnx", "ort-cpu")
    assert [(c.case, c.output, c.shape) for c in report.cases] == [
        ("case 0", "y", (2, 3)),
        ("case 1", "y", (5, 3)),
    ]

    wrong = run(inputs[1])["y"].copy()
    wrong[3, 1] += 0.25
    cases[1] = ("case 1", inputs[1], {"y": wrong})
    report = compare_runs(onnx, cases, profile=FP32)  # default runtime for ONNX: ort-cpu
    assert report.runtime == "ort-cpu"
    assert [c.case for c in report.failures] == ["case 1"]
    failure = report.failures[0]
    assert failure.where == (3, 1) and failure.max_abs == pytest.approx(0.25, rel=1e-5)
    assert report.message().startswith(
        "parity failed for tiny.onnx (ort-cpu): output 'y' on case 1"
    )


def test_runner_reference_stays_loaded(tiny_artifacts, scripted):
    onnx = tiny_artifacts[Format.ONNX]
    cases = [("a", feeds(3, 0)), ("b", feeds(4, 1))]
    with get_runner("torchscript")(tiny_artifacts[Format.TORCHSCRIPT]) as ts:
        report = compare_runs(onnx, cases, reference=ts, profile=FP32)
        assert report.passed and len(report.cases) == 2
        assert ts.infer(feeds(2, 2))["y"].shape == (2, 3)  # the caller's runner: still loaded
    ones = scripted(lambda f: {"y": zeros_y(f) + 1.0})
    report = compare_runs(onnx, cases, reference=ones, profile=FP32)
    assert not report.passed and [c.case for c in report.failures] == ["a", "b"]


def test_callable_reference_runs_once_per_case_before_the_candidate(
    tiny_artifacts, tiny_module, eager_output, scripted
):
    order: list[str] = []
    run = eager(tiny_module, eager_output)

    def reference(f):
        order.append("reference")
        return run(f)

    def candidate(f):
        order.append("candidate")
        return run(f)

    cases = [("a", feeds(2, 0)), ("b", feeds(2, 1))]
    report = compare_runs(scripted(candidate), cases, reference=reference, profile=FP32)
    assert report.passed and order == ["reference", "candidate"] * 2
    assert report.runtime == "scripted" and report.artifact == "tiny.onnx"


def test_missing_output_fails_naming_what_was_returned(tiny_artifacts, scripted):
    candidate = scripted(lambda f: {"z": zeros_y(f), "a": zeros_y(f)})
    report = compare_runs(
        candidate, [("a case", feeds(2, 0))], reference=lambda f: {"y": zeros_y(f)}, profile=FP32
    )
    (c,) = report.cases
    assert not c.passed and c.missing and not c.shape_mismatch
    assert c.returned == ("a", "z") and c.actual_shape is None and math.isnan(c.max_abs)
    assert c.reason == "missing; the artifact returned ['a', 'z']"
    assert report.message().endswith(
        "output 'y' on a case: missing; the artifact returned ['a', 'z']"
    )
    assert "actual_shape" not in c.to_dict() and "returned" not in c.to_dict()


def test_shape_mismatch_fails_in_the_reference_s_words(tiny_artifacts, scripted):
    candidate = scripted(lambda f: {"y": zeros_y(f)[:, :2]})
    report = compare_runs(
        candidate, [("c", feeds(2, 0))], reference=lambda f: {"y": zeros_y(f)},
        profile=FP32, reference_name="eager",
    )  # fmt: skip
    (c,) = report.cases
    assert not c.passed and c.shape_mismatch and not c.missing
    assert (c.shape, c.actual_shape) == ((2, 3), (2, 2))
    assert c.reason == "shape [2, 2], eager gives [2, 3]"
    assert sorted(c.to_dict()) == [
        "case", "cosine", "max_abs", "max_rel", "nonfinite_mismatches", "output", "passed",
        "reason", "shape", "where",
    ]  # fmt: skip


@pytest.mark.parametrize("profile", [FP32, INT8], ids=["fp32", "int8"])
def test_integer_outputs_must_match_exactly(tiny_artifacts, scripted, profile):
    ids = np.full((2, 3), 10_000, np.int64)
    off_by_one = ids.copy()
    off_by_one[1, 2] += 1  # within fp32's rtol and int8's cosine floor, were they floats
    same = compare_runs(
        scripted(lambda f: {"ids": ids.astype(np.int32)}),
        [("c", feeds(2, 0), {"ids": ids})],
        profile=profile,
    )
    assert same.passed
    report = compare_runs(
        scripted(lambda f: {"ids": off_by_one}), [("c", feeds(2, 0), {"ids": ids})], profile=profile
    )
    (c,) = report.cases
    assert not c.passed and c.where == (1, 2) and c.max_abs == 1.0 and c.cosine > 0.9999


def test_only_the_named_outputs_are_compared(tiny_artifacts, scripted):
    candidate = scripted(lambda f: {"y": zeros_y(f), "extra": zeros_y(f) + 5})
    stored = {"y": np.zeros((2, 3), np.float32), "extra": np.zeros((2, 3), np.float32)}
    report = compare_runs(candidate, [("c", feeds(2, 0), stored)], outputs=["y"], profile=FP32)
    assert report.passed and [c.output for c in report.cases] == ["y"]
    with pytest.raises(
        ParityError, match=r"the reference gave no output 'w' on c; it gave \['extra', 'y'\]"
    ):
        compare_runs(candidate, [("c", feeds(2, 0), stored)], outputs=["w"], profile=FP32)


def test_fail_fast_stops_after_the_first_failing_case_and_on_case_sees_each(scripted):
    calls = []

    def candidate(f):
        calls.append(1)
        return {"y": zeros_y(f) + (1.0 if len(calls) == 2 else 0.0)}

    cases = [(f"#{i}", feeds(2, i), {"y": np.zeros((2, 3), np.float32)}) for i in range(4)]
    seen: list[CaseResult] = []
    report = compare_runs(
        scripted(candidate), cases, profile=FP32, fail_fast=True, on_case=seen.append
    )
    assert [c.case for c in report.cases] == ["#0", "#1"] and len(calls) == 2
    assert [(r.case, r.passed) for r in seen] == [("#0", True), ("#1", False)]
    assert float(seen[1].got["y"][0, 0]) == 1.0 and float(seen[1].expected["y"][0, 0]) == 0.0
    calls.clear()
    report = compare_runs(scripted(candidate), cases, profile=FP32)
    assert [c.case for c in report.failures] == ["#1"] and len(report.cases) == 4


def test_each_case_needs_exactly_one_reference(scripted):
    candidate = scripted(lambda f: {"y": zeros_y(f)})
    stored = {"y": np.zeros((2, 3), np.float32)}
    with pytest.raises(ConfigError, match="case 'c' has no expected outputs and no reference"):
        compare_runs(candidate, [("c", feeds(2, 0))], profile=FP32)
    with pytest.raises(ConfigError, match="case 'c' carries expected outputs and a reference"):
        compare_runs(
            candidate, [("c", feeds(2, 0), stored)], reference=lambda f: stored, profile=FP32
        )


def test_unknown_runtime_for_an_artifact_candidate_lists_valid_ones(tiny_artifacts):
    with pytest.raises(ConfigError, match="unknown runtime 'nope'; valid:"):
        compare_runs(tiny_artifacts[Format.ONNX], [], runtime="nope", profile=FP32)
