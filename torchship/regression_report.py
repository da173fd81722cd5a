"""Compare two `torchship.bench/1` documents row by row, and render the verdicts.

Rows are matched on (runtime, precision, batch); when a document holds several artifacts with the
same key, the artifact file name joins the key. Renderings: a rich table, JSON, Markdown (for a
PR comment) and JUnit XML (for CI), all from the same `DocumentComparison`.
"""

from __future__ import annotations

import logging
import xml.etree.ElementTree as ET
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import PurePath
from typing import Any

from rich.table import Table
from rich.text import Text

from torchship.errors import ConfigError
from torchship.regression import CompareConfig, Comparison, Verdict, compare_samples

__all__ = [
    "COMPARE_SCHEMA",
    "RowComparison",
    "DocumentComparison",
    "compare_documents",
    "comparison_table",
    "comparison_markdown",
    "comparison_junit",
]

log = logging.getLogger(__name__)

COMPARE_SCHEMA = "torchship.compare/1"


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
    baseline: Mapping[str, Any],
    candidate: Mapping[str, Any],
    *,
    config: CompareConfig | None = None,
    strict: bool = False,
) -> DocumentComparison:
    """Per-row verdicts. Different fingerprints warn, or raise ConfigError when `strict`."""
    config = config or CompareConfig()
    fp_base, fp_cand = baseline.get("fingerprint"), candidate.get("fingerprint")
    if fp_base != fp_cand:
        message = (
            f"baseline fingerprint {fp_base} differs from candidate {fp_cand} (another machine or "
            "software versions): the latencies may not be comparable"
        )
        if strict:
            raise ConfigError(message + "; refusing under --strict")
        log.warning(message)
    base_rows, cand_rows = _rows_by_key(baseline), _rows_by_key(candidate)
    rows = []
    for key in sorted(set(base_rows) | set(cand_rows)):
        if key not in cand_rows:
            rows.append(RowComparison(key, None, missing_in="candidate"))
        elif key not in base_rows:
            rows.append(RowComparison(key, None, missing_in="baseline"))
        else:
            verdict = compare_samples(
                base_rows[key]["samples_ms"], cand_rows[key]["samples_ms"], config=config
            )
            rows.append(RowComparison(key, verdict))
    if not any(r.comparison for r in rows):
        raise ConfigError(
            "no (runtime, precision, batch) row is in both documents; nothing to compare"
        )
    return DocumentComparison(tuple(rows), fp_base, fp_cand, config.threshold_pct)


def _rows_by_key(document: Mapping[str, Any]) -> dict[tuple[str, ...], Mapping[str, Any]]:
    results = document.get("results", [])
    short = [
        (str(r["runtime"]), str(r.get("precision", "fp32")), f"batch {r['batch']}") for r in results
    ]
    unique = len(set(short)) == len(short)
    keyed = {}
    for key, result in zip(short, results, strict=True):
        full = key if unique else (*key, PurePath(str(result["artifact"])).name)
        keyed[full] = result
    return keyed


# --- renderings -------------------------------------------------------------------------------

_STYLE = {"slower": "bold red", "faster": "green", "same": "", "inconclusive": "yellow"}


def comparison_table(result: DocumentComparison) -> Table:
    table = Table(title=f"torchship compare (threshold {result.threshold_pct:g}%)")
    for column in ("row", "baseline p50 ms", "candidate p50 ms", "change", "99% CI", "verdict"):
        table.add_column(column, justify="left" if column in ("row", "verdict") else "right")
    for row in result.rows:
        c = row.comparison
        if c is None:
            table.add_row(row.label, "-", "-", "-", "-", row.verdict)
            continue
        style = _STYLE.get(c.verdict.value, "")
        table.add_row(
            row.label,
            f"{c.baseline_p50:.3f}",
            f"{c.candidate_p50:.3f}",
            f"{c.change_pct:+.1f}%",
            _ci_text(c),
            Text(c.verdict.value, style=style),
        )
    return table


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
            f"{c.change_pct:+.1f}% | {_ci_text(c)} | {c.verdict.value}{mark} |"
        )
    if not result.fingerprints_match:
        lines += ["", "> baseline and candidate come from different machines or software."]
    return "\n".join(lines) + "\n"


def comparison_junit(result: DocumentComparison, *, suite: str = "torchship.compare") -> str:
    """JUnit XML: one testcase per row; a regression is a failure, a missing row is skipped."""
    root = ET.Element(
        "testsuite",
        name=suite,
        tests=str(len(result.rows)),
        failures=str(len(result.regressions)),
        skipped=str(sum(1 for r in result.rows if r.comparison is None)),
    )
    for row in result.rows:
        case = ET.SubElement(root, "testcase", classname=suite, name=row.label)
        c = row.comparison
        if c is None:
            ET.SubElement(case, "skipped", message=row.verdict)
        elif c.regressed:
            failure = ET.SubElement(case, "failure", message=_summary(c))
            failure.text = _summary(c)
        else:
            ET.SubElement(case, "system-out").text = _summary(c)
    return ET.tostring(root, encoding="unicode", xml_declaration=True) + "\n"


def _ci_text(c: Comparison) -> str:
    if c.verdict is Verdict.INCONCLUSIVE:
        return c.note or "-"
    return f"{c.ci_low:.3f}-{c.ci_high:.3f}"


def _summary(c: Comparison) -> str:
    return (
        f"{c.verdict.value}: p50 {c.baseline_p50:.3f} -> {c.candidate_p50:.3f} ms "
        f"({c.change_pct:+.1f}%, ratio CI {_ci_text(c)}, threshold {c.threshold_pct:g}%)"
    )
