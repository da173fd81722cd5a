"""Compare two `torchship.bench/1` documents row by row, and write the verdicts as text.

Rows are matched on (runtime, precision, batch); when either document holds several artifacts with
the same such key, the artifact path (as written in the document) joins that key in both.
Writers: JSON (`DocumentComparison.to_dict`), Markdown (for a PR comment) and JUnit XML (for CI),
all from the same `DocumentComparison`; the CLI draws the terminal table.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from torchship.errors import ConfigError
from torchship.junit import CaseStatus, JUnitCase, junit_xml
from torchship.regression.stats import CompareConfig, Comparison, Verdict, compare_samples
from torchship.runtimes.bench import BenchDocument, BenchResult

__all__ = [
    "COMPARE_SCHEMA",
    "RowComparison",
    "DocumentComparison",
    "compare_documents",
    "comparison_markdown",
    "comparison_junit",
    "ci_text",
]

log = logging.getLogger(__name__)

COMPARE_SCHEMA = "torchship.compare/1"

_Key = tuple[str, ...]


@dataclass(frozen=True)
class RowComparison:
    """One matched (runtime, precision, batch[, artifact]) row, or one present on one side only."""

    key: tuple[str, ...]
    comparison: Comparison | None
    missing_in: str | None = None

    @property
    def label(self) -> str:
        return " / ".join(self.key)

    @property
    def verdict(self) -> str:
        return self.comparison.verdict.value if self.comparison else f"missing in {self.missing_in}"

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {"key": list(self.key), "verdict": self.verdict}
        if self.comparison is not None:
            data.update(self.comparison.to_dict())
        return data


@dataclass(frozen=True)
class DocumentComparison:
    rows: tuple[RowComparison, ...]
    baseline_fingerprint: str | None
    candidate_fingerprint: str | None
    threshold_pct: float

    @property
    def fingerprints_match(self) -> bool:
        return self.baseline_fingerprint == self.candidate_fingerprint

    @property
    def regressions(self) -> list[RowComparison]:
        return [r for r in self.rows if r.comparison is not None and r.comparison.regressed]

    @property
    def inconclusive(self) -> list[RowComparison]:
        """Rows with too few samples or rounds for a verdict: not a failure, but not a pass."""
        return [
            r
            for r in self.rows
            if r.comparison is not None and r.comparison.verdict is Verdict.INCONCLUSIVE
        ]

    @property
    def passed(self) -> bool:
        return not self.regressions

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": COMPARE_SCHEMA,
            "passed": self.passed,
            "threshold_pct": self.threshold_pct,
            "fingerprints": {
                "baseline": self.baseline_fingerprint,
                "candidate": self.candidate_fingerprint,
                "match": self.fingerprints_match,
            },
            "rows": [r.to_dict() for r in self.rows],
        }


def compare_documents(
    baseline: BenchDocument,
    candidate: BenchDocument,
    *,
    config: CompareConfig | None = None,
    strict: bool = False,
) -> DocumentComparison:
    """Per-row verdicts. Different fingerprints warn, or raise ConfigError when `strict`."""
    config = config or CompareConfig()
    fp_base, fp_cand = baseline.fingerprint, candidate.fingerprint
    if fp_base != fp_cand:
        message = (
            f"baseline fingerprint {fp_base} differs from candidate {fp_cand} (another machine or "
            "software versions): the latencies may not be comparable"
        )
        if strict:
            raise ConfigError(message + "; refusing under --strict")
        log.warning(message)
    base_rows, cand_rows = _keyed_rows(baseline, candidate)
    rows = []
    for key in sorted(set(base_rows) | set(cand_rows)):
        if key not in cand_rows:
            rows.append(RowComparison(key, None, missing_in="candidate"))
        elif key not in base_rows:
            rows.append(RowComparison(key, None, missing_in="baseline"))
        else:
            rows.append(RowComparison(key, _compare_row(key, base_rows, cand_rows, config)))
    if not any(r.comparison for r in rows):
        raise ConfigError(
            "no (runtime, precision, batch) row is in both documents; nothing to compare"
        )
    return DocumentComparison(tuple(rows), fp_base, fp_cand, config.threshold_pct)


def _compare_row(
    key: _Key,
    base_rows: Mapping[_Key, BenchResult],
    cand_rows: Mapping[_Key, BenchResult],
    config: CompareConfig,
) -> Comparison:
    base, cand = base_rows[key].samples_ms, cand_rows[key].samples_ms
    try:
        return compare_samples(base, cand, config=config)
    except ConfigError as exc:
        raise ConfigError(f"row {' / '.join(key)}: {exc}") from None


def _keyed_rows(
    baseline: BenchDocument, candidate: BenchDocument
) -> tuple[dict[_Key, BenchResult], dict[_Key, BenchResult]]:
    """Both documents' rows by key. A (runtime, precision, batch) that either document holds
    more than once is qualified by the artifact path in both, so the two keep matching."""
    crowded = _crowded(baseline.results) | _crowded(candidate.results)
    return (
        _by_key("baseline", baseline.results, crowded),
        _by_key("candidate", candidate.results, crowded),
    )


def _short_key(result: BenchResult) -> _Key:
    return str(result.runtime), str(result.precision), f"batch {result.batch}"


def _crowded(results: Sequence[BenchResult]) -> set[_Key]:
    keys = [_short_key(r) for r in results]
    return {k for k in keys if keys.count(k) > 1}


def _by_key(
    side: str, results: Sequence[BenchResult], crowded: set[_Key]
) -> dict[_Key, BenchResult]:
    keyed: dict[_Key, BenchResult] = {}
    for result in results:
        key = _short_key(result)
        if key in crowded:
            # the path as written, not its file name: old/model.onnx and new/model.onnx differ
            key = (*key, str(result.artifact))
        if key in keyed:
            raise ConfigError(
                f"{side} document: two rows for {' / '.join(key)}; cannot tell which to compare"
            )
        keyed[key] = result
    return keyed


# --- writers ----------------------------------------------------------------------------------


def comparison_markdown(result: DocumentComparison) -> str:
    head = "no latency regression" if result.passed else "**latency regression**"
    lines = [
        f"### torchship compare: {head} (threshold {result.threshold_pct:g}%)",
        "",
        "| row | baseline p50 ms | candidate p50 ms | change | CI of ratio | verdict |",
        "|---|---:|---:|---:|---:|---|",
    ]
    for row in result.rows:
        c = row.comparison
        if c is None:
            lines.append(f"| {row.label} | - | - | - | - | {row.verdict} |")
            continue
        mark = " :x:" if c.regressed else ""
        lines.append(
            f"| {row.label} | {c.baseline_p50:.3f} | {c.candidate_p50:.3f} | "
            f"{c.change_pct:+.1f}% | {ci_text(c)} | {c.verdict.value}{mark} |"
        )
    for row in result.inconclusive:
        lines += ["", f"> {row.label}: inconclusive, {row.comparison.note}."]
    if not result.fingerprints_match:
        lines += ["", "> baseline and candidate come from different machines or software."]
    return "\n".join(lines) + "\n"


def comparison_junit(result: DocumentComparison, *, suite: str = "torchship.compare") -> str:
    """JUnit XML: one testcase per row; a regression is a failure, a missing or inconclusive row
    is skipped."""
    return junit_xml(suite, [_junit_case(row) for row in result.rows])


def _junit_case(row: RowComparison) -> JUnitCase:
    c = row.comparison
    if c is None:
        return JUnitCase(row.label, CaseStatus.SKIPPED, row.verdict)
    if c.verdict is Verdict.INCONCLUSIVE:
        return JUnitCase(row.label, CaseStatus.SKIPPED, _summary(c))
    status = CaseStatus.FAILED if c.regressed else CaseStatus.PASSED
    return JUnitCase(row.label, status, _summary(c))


def ci_text(c: Comparison) -> str:
    """The ratio's confidence interval as text, or why there is none (inconclusive)."""
    if c.verdict is Verdict.INCONCLUSIVE:
        return c.note or "-"
    return f"{c.ci_low:.3f}-{c.ci_high:.3f}"


def _summary(c: Comparison) -> str:
    return (
        f"{c.verdict.value}: p50 {c.baseline_p50:.3f} -> {c.candidate_p50:.3f} ms "
        f"({c.change_pct:+.1f}%, ratio CI {ci_text(c)}, threshold {c.threshold_pct:g}%)"
    )
