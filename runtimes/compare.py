"""The comparator: run a reference and a candidate on the same feeds and compare every output.

Export parity, engine checks, the INT8 proof and `torchship verify` all compare through here
(docs/design.md, "The comparator").
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

from torchship.runtimes.tolerance import ToleranceProfile

__all__ = ["OutputComparison", "ParityReport", "compare_arrays", "compare_output"]


@dataclass(frozen=True)
class OutputComparison:
    """How one output of one input case compares with eager."""

    case: str
    output: str
    shape: tuple[int, ...]
    max_abs: float
    max_rel: float
    where: tuple[int, ...]
    cosine: float
    nonfinite_mismatches: int
    passed: bool
    reason: str = ""

    def to_dict(self) -> dict:
        data = asdict(self)
        data["shape"], data["where"] = list(self.shape), list(self.where)
        return data


@dataclass
class ParityReport:
    """All comparisons of one artifact against eager; `passed` when every one passed."""

    artifact: str
    runtime: str
    profile: ToleranceProfile
    cases: list[OutputComparison] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.cases)

    @property
    def failures(self) -> list[OutputComparison]:
        return [c for c in self.cases if not c.passed]

    def message(self) -> str:
        """One line: "parity ok ..." or the first failure with its errors and location."""
        if self.passed:
            return f"parity ok for {self.artifact} ({self.runtime}): {len(self.cases)} comparisons"
        failure = _describe(self.failures[0], self.profile)
        return f"parity failed for {self.artifact} ({self.runtime}): {failure}"

    def to_dict(self) -> dict:
        return {
            "artifact": self.artifact,
            "runtime": self.runtime,
            "passed": self.passed,
            "profile": self.profile.to_dict(),
            "cases": [c.to_dict() for c in self.cases],
        }


def _describe(c: OutputComparison, p: ToleranceProfile) -> str:
    head = f"output {c.output!r} on {c.case}: "
    if c.reason:
        return head + c.reason
    where = list(c.where)
    return head + (
        f"max abs err {c.max_abs:.3g} at {where} (atol {p.atol:g}), "
        f"max rel err {c.max_rel:.3g} (rtol {p.rtol:g}), "
        f"cosine {c.cosine:.6g} (min {p.min_cosine:g})"
        + (f", {c.nonfinite_mismatches} non-finite mismatches" if c.nonfinite_mismatches else "")
    )


def compare_output(
    case: str, name: str, expected: np.ndarray, got: dict[str, np.ndarray], p: ToleranceProfile
) -> OutputComparison:
    if name not in got:
        return _failed(case, name, expected.shape, f"missing; the artifact returned {sorted(got)}")
    actual = np.asarray(got[name])
    if actual.shape != expected.shape:
        reason = f"shape {list(actual.shape)}, eager gives {list(expected.shape)}"
        return _failed(case, name, expected.shape, reason)
    return compare_arrays(case, name, expected, actual, p)


def _failed(case: str, name: str, shape: tuple[int, ...], reason: str) -> OutputComparison:
    nan = float("nan")
    return OutputComparison(case, name, tuple(shape), nan, nan, (), nan, 0, False, reason)


def compare_arrays(
    case: str, name: str, expected: np.ndarray, actual: np.ndarray, p: ToleranceProfile
) -> OutputComparison:
    """Compare one output; integer/bool outputs must match exactly."""
    exact = not (
        np.issubdtype(expected.dtype, np.inexact) or np.issubdtype(actual.dtype, np.inexact)
    )
    ref = expected.astype(np.float64)
    out = actual.astype(np.float64)
    same_nonfinite = (~np.isfinite(ref)) & ((ref == out) | (np.isnan(ref) & np.isnan(out)))
    both_finite = np.isfinite(ref) & np.isfinite(out)
    nonfinite = int(np.count_nonzero(~both_finite & ~same_nonfinite))
    with np.errstate(invalid="ignore", over="ignore"):
        diff = np.where(both_finite, np.abs(ref - out), 0.0)
    rel = diff / np.maximum(np.abs(np.where(both_finite, ref, 0.0)), np.finfo(np.float64).tiny)
    where = (
        tuple(int(i) for i in np.unravel_index(np.argmax(diff), diff.shape)) if diff.size else ()
    )
    max_abs = float(diff.max()) if diff.size else 0.0
    max_rel = float(rel.max()) if rel.size else 0.0
    cosine = _cosine(np.where(both_finite, ref, 0.0), np.where(both_finite, out, 0.0))
    if exact:
        ok = max_abs == 0.0 and nonfinite == 0
    else:
        ok = nonfinite == 0 and _within(diff, ref, p) and _cosine_ok(cosine, ref, p)
    return OutputComparison(
        case, name, tuple(expected.shape), max_abs, max_rel, where, cosine, nonfinite, ok
    )


def _within(diff: np.ndarray, ref: np.ndarray, p: ToleranceProfile) -> bool:
    if not p.checks_elements:
        return True
    bound = p.atol + p.rtol * np.abs(np.where(np.isfinite(ref), ref, 0.0))
    return bool(np.all(diff <= bound))


def _cosine_ok(cosine: float, ref: np.ndarray, p: ToleranceProfile) -> bool:
    # An output that is ~zero everywhere has no meaningful direction; atol already covers it.
    finite = ref[np.isfinite(ref)]
    if p.checks_elements and (finite.size == 0 or np.abs(finite).max() <= p.atol):
        return True
    return cosine >= p.min_cosine


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    na, nb = float(np.linalg.norm(a)), float(np.linalg.norm(b))
    if na == 0.0 and nb == 0.0:
        return 1.0
    if na == 0.0 or nb == 0.0:
        return 0.0
    return float(np.dot(a.ravel(), b.ravel()) / (na * nb))
