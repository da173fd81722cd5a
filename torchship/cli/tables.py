"""Terminal tables (rich) for the CLI. Library code returns data; only the CLI prints these.

Cells are plain text: the CLI's console has markup off, so `torchship[gpu]` prints as is.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from rich import box
from rich.table import Table
from rich.text import Text

from torchship.regression.documents import DocumentComparison, ci_text
from torchship.runtimes import BenchDocument
from torchship.tune import TuneReport

__all__ = [
    "release_line",
    "ship_table",
    "bench_table",
    "doctor_table",
    "comparison_table",
    "tune_table",
    "human_size",
]


def human_size(num_bytes: int) -> str:
    size = float(num_bytes)
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} GB"


#: narrower names for the ship table, which must fit a 140-column pipe


def ship_table(rows: Sequence, *, batch: int) -> Table:
    # no column rules, no format column (the file suffix says it): ten columns must fit a
    # 140-column pipe with the search's longest names; only `check` may wrap
    table = Table(
        title=f"torchship demo — batch {batch}",
        box=box.SIMPLE_HEAD,
        pad_edge=False,
        collapse_padding=True,
    )
    numeric = ("size", "accuracy", "drop pt", "p50 ms", "vs eager", "vs onnx")
    widest = max((len(r.name) for r in rows), default=8)
    table.add_column("artifact", min_width=widest, no_wrap=True)
    for column in ("runtime", "prec", *numeric):
        table.add_column(column, justify="right" if column in numeric else "left", no_wrap=True)
    table.add_column("check")
    for r in rows:
        accuracy = "-" if r.accuracy is None else f"{100 * r.accuracy:.2f}%"
        drop = "-" if r.drop_points is None else f"{r.drop_points:+.2f}"
        vs_onnx = "-" if r.speedup_vs_onnx is None else f"{r.speedup_vs_onnx:.2f}x"
        table.add_row(
            r.name,
            r.runtime,
            r.precision,
            human_size(r.size_bytes),
            accuracy,
            drop,
            f"{r.p50_ms:.3f}",
            f"{r.speedup_vs_eager:.2f}x",
            vs_onnx,
            r.check,
        )
    return table


def bench_table(document: BenchDocument) -> Table:
    table = Table(title="torchship bench")
    for column in (
        "artifact",
        "runtime",
        "precision",
        "batch",
        "p50 ms",
        "p90 ms",
        "p99 ms",
        "cv",
        "throughput/s",
        "cold start ms",
        "iters",
    ):
        table.add_column(column, justify="left" if column in ("artifact", "runtime") else "right")
    for r in document.results:
        stats = r.stats
        table.add_row(
            Path(r.artifact).name,
            r.runtime,
            r.precision,
            str(r.batch),
            f"{stats.p50:.3f}",
            f"{stats.p90:.3f}",
            f"{stats.p99:.3f}",
            f"{stats.cv:.1%}",
            f"{r.throughput_per_s:.1f}",
            f"{r.cold_start_ms:.1f}",
            str(r.iters),
        )
    return table


def doctor_table(facts: dict) -> Table:
    table = Table(title="torchship doctor", show_header=False)
    table.add_column("what")
    table.add_column("value")
    for key, value in facts.items():
        table.add_row(key, value)
    return table


_VERDICT_STYLE = {"slower": "bold red", "faster": "green", "same": "", "inconclusive": "yellow"}


def comparison_table(result: DocumentComparison) -> Table:
    table = Table(title=f"torchship compare (threshold {result.threshold_pct:g}%)")
    for column in ("row", "baseline p50 ms", "candidate p50 ms", "change", "99% CI", "verdict"):
        table.add_column(column, justify="left" if column in ("row", "verdict") else "right")
    for row in result.rows:
        c = row.comparison
        if c is None:
            table.add_row(row.label, "-", "-", "-", "-", row.verdict)
            continue
        style = _VERDICT_STYLE.get(c.verdict.value, "")
        table.add_row(
            row.label,
            f"{c.baseline_p50:.3f}",
            f"{c.candidate_p50:.3f}",
            f"{c.change_pct:+.1f}%",
            ci_text(c),
            Text(c.verdict.value, style=style),
        )
    return table


def tune_table(report: TuneReport) -> Table:
    """Every candidate of `torchship tune` with its outcome, its measure and why."""
    budget = report.measure
    title = f"candidates at batch {report.batch}: {budget.describe()}"
    if report.chosen_by:
        title += f", chosen by {report.chosen_by}"
    table = Table(title=title)
    for column in ("candidate", "runtime", "precision", "p50 ms", f"vs {report.reference}"):
        table.add_column(column)
    table.add_column(_MEASURE_HEADERS[budget.metric.value])
    table.add_column("outcome")
    for r in report.results:
        value = r.drop if r.value is None else r.value
        table.add_row(
            r.candidate.name, r.candidate.runtime,
            str(r.facts.get("inference_precision", r.candidate.precision)),
            "" if r.p50_ms is None else f"{r.p50_ms:.3f}",
            "" if r.speedup is None else f"{r.speedup:.2f}x",
            "" if value is None else _MEASURE_FORMATS[r.metric].format(value),
            f"{r.outcome.value}: {r.reason}",
        )  # fmt: skip
    return table


#: the measure column of the tune table: its header and how a value prints
_MEASURE_HEADERS = {
    "top1": "drop pt",
    "agreement": "drop pt",
    "cosine": "cosine",
    "sqnr": "SQNR dB",
    "relerr": "relerr",
}
_MEASURE_FORMATS = {
    "top1": "{:.2f}",
    "agreement": "{:.2f}",
    "cosine": "{:.4f}",
    "sqnr": "{:.1f}",
    "relerr": "{:.4g}",
}


def release_line(release: dict) -> str:
    """The deployment search's choice in one line (tune_report.json says why others lost)."""
    if release.get("artifact") is None:
        return f"release: none ({release['reason']})"
    speedup = release.get("speedup_vs_onnx")
    versus = "" if speedup is None else f", {speedup:.2f}x FP32 ONNX on ort-cpu"
    return (
        f"release: {release['artifact']} on {release['runtime']} ({release['precision']}"
        f"{versus}, drop {release['drop_points']:+.2f} pt); every candidate: tune_report.json"
    )
