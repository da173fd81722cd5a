"""Parity comparisons, tolerance profiles, and failures that name the output tensor."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest
import torch
from torch import nn

from torchship.artifact import Precision
from torchship.errors import ConfigError, ParityError
from torchship.exporter import (
    TOLERANCES,
    ToleranceProfile,
    check_parity,
    export_model,
    require_parity,
)
from torchship.loaded import LoadedModel
from torchship.runtimes.compare import compare_arrays
from torchship.specs import InputSpec

FP32 = TOLERANCES.get("fp32")


class TwoHeads(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Linear(6, 8)
        self.logits = nn.Linear(8, 4)
        self.score = nn.Linear(8, 1)

    def forward(self, x: torch.Tensor):
        h = torch.tanh(self.body(x))
        return self.logits(h), self.score(h)


def two_heads(seed: int) -> LoadedModel:
    torch.manual_seed(seed)
    spec = InputSpec("x", "float32", (2, 6), {0: "batch"})
    return LoadedModel(TwoHeads().eval(), (spec,), ("logits", "score"), source="test")


def test_profiles_by_precision():
    assert FP32 == ToleranceProfile(atol=1e-4, rtol=1e-3, min_cosine=0.9999)
    assert TOLERANCES.get("fp16").atol == 1e-2
    int8 = TOLERANCES.get(Precision.INT8.value)
    assert math.isinf(int8.atol) and not int8.checks_elements and int8.min_cosine == 0.99
    with pytest.raises(ConfigError, match="unknown tolerance profile 'fp8'; valid: bf16, fp16"):
        TOLERANCES.get("fp8")


def test_profile_rejects_bad_values():
    with pytest.raises(ConfigError, match="tolerances must be >= 0, got atol=-1"):
        ToleranceProfile(atol=-1, rtol=0, min_cosine=0.9)
    with pytest.raises(ConfigError, match="min_cosine must be in"):
        ToleranceProfile(atol=0, rtol=0, min_cosine=2)


def test_compare_reports_worst_element():
    ref = np.zeros((3, 4), np.float32) + 1.0
    got = ref.copy()
    got[2, 1] += 0.5
    c = compare_arrays("case", "y", ref, got, FP32)
    assert not c.passed
    assert c.where == (2, 1) and c.max_abs == pytest.approx(0.5) and c.max_rel == pytest.approx(0.5)
    assert compare_arrays("case", "y", ref, ref + 1e-6, FP32).passed


def test_compare_within_rtol_passes():
    ref = np.full((4,), 1000.0, np.float32)
    assert compare_arrays("c", "y", ref, ref + 0.5, FP32).passed  # 0.5 <= 1e-4 + 1e-3 * 1000


def test_nonfinite_mismatch_fails_and_matching_nonfinite_passes():
    ref = np.array([1.0, np.nan, np.inf], np.float32)
    assert compare_arrays("c", "y", ref, ref.copy(), FP32).passed
    got = np.array([1.0, 2.0, np.inf], np.float32)
    c = compare_arrays("c", "y", ref, got, FP32)
    assert not c.passed and c.nonfinite_mismatches == 1
    c = compare_arrays("c", "y", ref, np.array([1.0, np.nan, -np.inf], np.float32), FP32)
    assert not c.passed and c.nonfinite_mismatches == 1


def test_integer_outputs_compare_exactly():
    ref = np.array([[1, 2], [3, 4]], np.int64)
    assert compare_arrays("c", "ids", ref, ref.copy(), FP32).passed
    got = ref.copy()
    got[1, 0] = 2
    c = compare_arrays("c", "ids", ref, got, FP32)
    assert not c.passed and c.where == (1, 0)
    mask = np.array([True, False])
    assert not compare_arrays("c", "mask", mask, ~mask, FP32).passed


def test_int8_profile_uses_cosine_only():
    int8 = TOLERANCES.get("int8")
    rng = np.random.default_rng(0)
    ref = rng.standard_normal(1000).astype(np.float32)
    assert compare_arrays("c", "y", ref, ref + 0.05 * rng.standard_normal(1000), int8).passed
    assert not compare_arrays("c", "y", ref, rng.standard_normal(1000), int8).passed


def test_cosine_is_not_required_for_near_zero_outputs():
    ref = np.full((8,), 1e-7, np.float32)
    got = -ref
    c = compare_arrays("c", "y", ref, got, FP32)
    assert c.cosine < 0 and c.passed


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    model = two_heads(seed=0)
    out = tmp_path_factory.mktemp("parity")
    artifacts = export_model(model, out, formats=["onnx", "torchscript"])
    return model, {a.format.value: a for a in artifacts}


def test_other_models_artifact_fails_naming_the_output(exported):
    model, artifacts = exported
    other = two_heads(seed=1)  # same architecture, different weights
    with pytest.raises(
        ParityError,
        match=r"^parity failed for model\.onnx \(ort-cpu\): output 'logits' on example input: "
        r"max abs err \S+ at \[\d+, \d+\] \(atol 0\.0001\), max rel err \S+ \(rtol 0\.001\), "
        r"cosine \S+ \(min 0\.9999\)$",
    ):
        require_parity(other, artifacts["onnx"])


def test_perturbed_weights_fail_on_the_affected_output(exported):
    model, artifacts = exported
    perturbed = two_heads(seed=0)
    with torch.no_grad():
        perturbed.module.score.bias += 0.01
    report = check_parity(perturbed, artifacts["torchscript"], num_random=1)
    assert not report.passed
    assert {c.output for c in report.failures} == {"score"}
    assert {c.case for c in report.failures} == {
        "example input",
        "random input #1",
        "batch=3 input",
    }
    with pytest.raises(ParityError, match=r"\(torchscript\): output 'score' on example input"):
        require_parity(perturbed, artifacts["torchscript"], num_random=0)


def test_report_to_dict(exported):
    model, artifacts = exported
    report = check_parity(model, artifacts["onnx"], runtime="ort-cpu", num_random=1)
    data = report.to_dict()
    assert data["passed"] is True and data["runtime"] == "ort-cpu"
    assert data["profile"] == {"atol": 1e-4, "rtol": 1e-3, "min_cosine": 0.9999}
    assert len(data["cases"]) == 3 * 2
    first = data["cases"][0]
    assert first["case"] == "example input" and first["output"] == "logits"
    assert isinstance(first["where"], list) and first["passed"] is True


def test_explicit_profile_overrides_precision(exported):
    model, artifacts = exported
    strict = ToleranceProfile(atol=0.0, rtol=0.0, min_cosine=1.0)
    loose = replace(FP32, atol=1.0)
    perturbed = two_heads(seed=0)
    with torch.no_grad():
        perturbed.module.score.bias += 0.01
    assert check_parity(perturbed, artifacts["onnx"], num_random=0, profile=loose).passed
    assert isinstance(check_parity(model, artifacts["onnx"], profile=strict).passed, bool)


def test_unknown_runtime_lists_valid_ones(exported):
    model, artifacts = exported
    with pytest.raises(ConfigError, match="unknown runtime 'nope'; valid:"):
        check_parity(model, artifacts["onnx"], runtime="nope")
