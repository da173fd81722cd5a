"""The comparator: run a reference and a candidate on the same feeds and compare every output.

Export parity, engine checks, the INT8 proof and `torchship verify` all compare through here
(docs/design.md, "The comparator").
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field

import numpy as np

from torchship.artifact import Artifact
from torchship.errors import ConfigError, ParityError
from torchship.runtimes.base import Runner, default_runtime_for, get_runner
from torchship.runtimes.tolerance import ToleranceProfile

__all__ = [
    "Case",
    "CaseResult",
    "OutputComparison",
    "ParityReport",
    "Reference",
    "compare_arrays",
    "compare_output",
    "compare_runs",
]

Feeds = Mapping[str, np.ndarray]
Outputs = Mapping[str, np.ndarray]
#: (label, feeds), or (label, feeds, expected outputs) when the reference is stored outputs.
Case = tuple[str, Feeds] | tuple[str, Feeds, Outputs]
#: A loaded Runner, or a callable feeds -> outputs (e.g. `LoadedModel.run`).
Reference = Runner | Callable[[Feeds], Outputs]


@dataclass(frozen=True)
class OutputComparison:
    """How one output of one input case compares with the reference.

    `shape` is the reference's; `actual_shape` the candidate's (None when it returned no such
    output, then `returned` lists what it did return). Neither of those two is in `to_dict`.
    """

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
    actual_shape: tuple[int, ...] | None = None
    returned: tuple[str, ...] = ()

    @property
    def missing(self) -> bool:
        """The candidate returned no output of this name."""
        return self.actual_shape is None

    @property
    def shape_mismatch(self) -> bool:
        return self.actual_shape is not None and self.actual_shape != self.shape

    def to_dict(self) -> dict:
        data = asdict(self)
        del data["actual_shape"], data["returned"]
        data["shape"], data["where"] = list(self.shape), list(self.where)
        return data


@dataclass(frozen=True)
class CaseResult:
    """One case run on both sides: the outputs and their comparisons, in output order."""

    case: str
    expected: Outputs
    got: Outputs
    comparisons: tuple[OutputComparison, ...]

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.comparisons)


@dataclass
class ParityReport:
    """All comparisons of one artifact against its reference; `passed` when every one passed."""

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


def compare_runs(
    candidate: Runner | Artifact,
    cases: Iterable[Case],
    *,
    profile: ToleranceProfile,
    reference: Reference | None = None,
    runtime: str | None = None,
    outputs: Sequence[str] | None = None,
    reference_name: str = "the reference",
    fail_fast: bool = False,
    on_case: Callable[[CaseResult], None] | None = None,
) -> ParityReport:
    """Run the reference and `candidate` on every case; compare each output with `profile`.

    `candidate`: a loaded Runner, or an artifact opened here in `runtime` (default: the one for
    its format) and closed after. `reference`: a loaded Runner or a callable feeds -> outputs;
    None when every case carries its expected outputs. `outputs`: the names to compare (default:
    every output of the reference); `reference_name` words shape failures ("eager gives").
    `fail_fast` stops after the first case with a failure. `on_case` sees each case's outputs and
    comparisons, for figures derived from the same run; what it raises ends the run.
    """
    with _opened(candidate, runtime) as runner:
        report = ParityReport(runner.artifact.path.name, runner.name, profile)
        for case in cases:
            label, feeds, expected = _expected(case, reference)
            got = runner.infer(feeds)
            names = tuple(expected) if outputs is None else tuple(outputs)
            comparisons = tuple(
                compare_output(label, name, _reference_output(expected, name, label), got,
                               profile, reference_name=reference_name)
                for name in names
            )  # fmt: skip
            result = CaseResult(label, expected, got, comparisons)
            report.cases.extend(comparisons)
            if on_case is not None:
                on_case(result)
            if fail_fast and not result.passed:
                break
    return report


@contextlib.contextmanager
def _opened(candidate: Runner | Artifact, runtime: str | None) -> Iterator[Runner]:
    if isinstance(candidate, Runner):
        yield candidate  # the caller's runner: the caller loads and closes it
        return
    with get_runner(runtime or default_runtime_for(candidate.format))(candidate) as runner:
        yield runner


def _expected(case: Case, reference: Reference | None) -> tuple[str, Feeds, Outputs]:
    """(label, feeds, reference outputs): stored in the case, or run on the reference now."""
    label, feeds, *stored = case
    if stored and reference is not None:
        raise ConfigError(f"case {label!r} carries expected outputs and a reference was given too")
    if stored:
        return label, feeds, stored[0]
    if reference is None:
        raise ConfigError(f"case {label!r} has no expected outputs and no reference was given")
    run = reference.infer if isinstance(reference, Runner) else reference
    return label, feeds, run(feeds)


def _reference_output(expected: Outputs, name: str, case: str) -> np.ndarray:
    if name not in expected:
        raise ParityError(
            f"the reference gave no output {name!r} on {case}; it gave {sorted(expected)}"
        )
    return np.asarray(expected[name])


def compare_output(
    case: str,
    name: str,
    expected: np.ndarray,
    got: Outputs,
    p: ToleranceProfile,
    *,
    reference_name: str = "the reference",
) -> OutputComparison:
    """Compare output `name` of `got` with `expected`; a missing output or other shape fails."""
    if name not in got:
        reason = f"missing; the artifact returned {sorted(got)}"
        return _failed(case, name, expected.shape, None, reason, returned=tuple(sorted(got)))
    actual = np.asarray(got[name])
    if actual.shape != expected.shape:
        reason = f"shape {list(actual.shape)}, {reference_name} gives {list(expected.shape)}"
        return _failed(case, name, expected.shape, actual.shape, reason)
    return compare_arrays(case, name, expected, actual, p)


def _failed(
    case: str,
    name: str,
    shape: tuple[int, ...],
    actual_shape: tuple[int, ...] | None,
    reason: str,
    *,
    returned: tuple[str, ...] = (),
) -> OutputComparison:
    nan = float("nan")
    return OutputComparison(
        case, name, tuple(shape), nan, nan, (), nan, 0, False, reason,
        actual_shape=None if actual_shape is None else tuple(actual_shape), returned=returned,
    )  # fmt: skip


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
        case, name, tuple(expected.shape), max_abs, max_rel, where, cosine, nonfinite, ok,
        actual_shape=tuple(actual.shape),
    )  # fmt: skip


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
