"""The one report writer: bench.json, report.json and, where asked, report.md, junit.xml and
latency.png (when matplotlib is installed)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

from torchship.files import atomic_write_json, atomic_write_text
from torchship.junit import CaseStatus, JUnitCase, junit_xml
from torchship.pipeline.results import BundleRow, GateResult, PipelineResult, ShipReport
from torchship.runtimes.bench import BenchDocument

__all__ = ["REPORT_FILES", "write_reports"]

log = logging.getLogger(__name__)

#: the reports a plan may ask for beside bench.json and report.json
REPORT_FILES = ("report.md", "junit.xml", "latency.png")


def write_reports(
    folder: Path,
    report: ShipReport | PipelineResult,
    *,
    bench: BenchDocument,
    rows: Sequence[BundleRow],
    gates: Sequence[GateResult],
    title: str,
    suite: str,
    files: Sequence[str] = REPORT_FILES,
) -> None:
    """Write the reports into `folder`: `title` heads report.md, `suite` names the JUnit suite."""
    atomic_write_json(folder / "bench.json", bench.to_dict())
    atomic_write_json(folder / "report.json", report.report_json())
    if "report.md" in files:
        atomic_write_text(folder / "report.md", markdown(title, report.passed, gates, rows))
    if "junit.xml" in files:
        atomic_write_text(folder / "junit.xml", _junit(suite, gates))
    if "latency.png" in files:
        plot_latency(folder / "latency.png", rows)


def markdown(
    title: str, passed: bool, gates: Sequence[GateResult], rows: Sequence[BundleRow]
) -> str:
    status = "PASSED" if passed else "FAILED"
    lines = [f"# {title}: {status}", "", "## Gates", ""]
    lines += [f"- {'pass' if g.passed else 'FAIL'} `{g.name}`: {g.detail}" for g in gates]
    lines += ["", "## Artifacts", "", "| artifact | runtime | precision | batch | accuracy | "
              "p50 ms | p90 ms | speedup |", "|---|---|---|---:|---:|---:|---:|---:|"]  # fmt: skip
    for r in rows:
        accuracy = "-" if r.accuracy is None else f"{100 * r.accuracy:.2f}%"
        lines.append(
            f"| {r.artifact} | {r.runtime} | {r.precision} | {r.batch} | {accuracy} "
            f"| {r.p50_ms:.3f} | {r.p90_ms:.3f} | {r.speedup_vs_eager:.2f}x |"
        )
    return "\n".join(lines) + "\n"


def _junit(suite: str, gates: Sequence[GateResult]) -> str:
    """One test case per gate."""
    cases = [
        JUnitCase(g.name, CaseStatus.PASSED)
        if g.passed
        else JUnitCase(g.name, CaseStatus.FAILED, g.detail)
        for g in gates
    ]
    return junit_xml(suite, cases)


def plot_latency(path: Path, rows: Sequence[BundleRow]) -> None:
    """A bar per row (p50); nothing, logged, without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log.info("matplotlib is not installed; no latency plot in the bundle")
        return
    figure, axes = plt.subplots(figsize=(7, 0.4 * len(rows) + 1.5))
    labels = [f"{r.artifact} / {r.runtime} / b{r.batch}" for r in rows]
    axes.barh(labels, [r.p50_ms for r in rows])
    axes.set_xlabel("p50 latency (ms)")
    figure.tight_layout()
    figure.savefig(path, metadata={"Software": None})
    plt.close(figure)
