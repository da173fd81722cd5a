"""The per-layer report on disk: `layers.json`, `layers.md`, and `layers_sqnr.png` (plot extra)."""

from __future__ import annotations

import logging
from pathlib import Path

from torchship.calibration.debug_layers import (
    LayerReport,
    LayerRow,
    feeds_for_report,
    layer_report,
)
from torchship.data import DataSet
from torchship.errors import first_line
from torchship.files import atomic_path, atomic_write_json, atomic_write_text
from torchship.interrupts import reraise_interrupt

__all__ = [
    "JSON_NAME",
    "MARKDOWN_NAME",
    "PLOT_NAME",
    "layer_summary_into",
    "to_markdown",
    "write_layer_files",
]

log = logging.getLogger(__name__)

JSON_NAME = "layers.json"
MARKDOWN_NAME = "layers.md"
PLOT_NAME = "layers_sqnr.png"
_MD_ROWS = 40


def write_layer_files(report: LayerReport, out_dir: Path, *, plot: bool = True) -> list[Path]:
    """Write the JSON and Markdown (and the plot when matplotlib is installed); the paths."""
    out_dir = Path(out_dir)
    written = [out_dir / JSON_NAME, out_dir / MARKDOWN_NAME]
    atomic_write_json(written[0], report.to_dict())
    atomic_write_text(written[1], to_markdown(report))
    if plot:
        path = plot_sqnr(report, out_dir / PLOT_NAME)
        if path is not None:
            written.append(path)
    return written


def to_markdown(report: LayerReport) -> str:
    lines = [
        "# Per-layer quantization error",
        "",
        f"`{Path(report.quantized).name}` vs `{Path(report.fp32).name}` on {report.data}"
        + (" (random inputs: no data was given)" if report.random_inputs else ""),
        "",
        "Outputs: "
        + ", ".join(
            f"`{name}` SQNR {_num(v['sqnr_db'])} dB, cosine {_num(v['cosine'], 5)}"
            for name, v in report.outputs.items()
        ),
        "",
        "Ranked by *alone*: the model's output SQNR when only that layer is quantized (the INT8 "
        "model's own scales, Q/DQ emulated in float), lowest first; then by *added*: the SQNR a "
        "node's output would have if the noise it adds were the only noise. *SQNR* and *cosine* "
        "compare its output in the quantized model with FP32.",
        "",
        "| # | module | node | op | alone dB | added dB | SQNR dB | cosine | weight SQNR dB "
        "| FP32 µs | quantized µs | Q/DQ µs |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for rank, row in enumerate(report.ranked()[:_MD_ROWS], 1):
        lines.append(_md_row(rank, row))
    if report.totals_us:
        lines += [
            "",
            f"Kernel time per run: FP32 {report.totals_us['fp32']:.1f} µs, quantized "
            f"{report.totals_us['quantized']:.1f} µs (ORT profiler, one batch).",
        ]
    if report.other_us:
        other = ", ".join(f"{k} {v:.1f} µs" for k, v in report.other_us.items())
        lines.append(f"Time in nodes ORT added: {other}.")
    return "\n".join(lines) + "\n"


def _md_row(rank: int, row: LayerRow) -> str:
    origin = row.origin
    cells = [
        str(rank), origin.module or "-", f"`{origin.node}`", origin.op_type,
        _num(row.alone_sqnr_db), _num(row.added_sqnr_db), _num(row.sqnr_db),
        _num(row.cosine, 5),
        _num(row.weight_sqnr_db), _num(row.fp32_us, 1), _num(row.quant_us, 1),
        _num(row.qdq_us, 1),
    ]  # fmt: skip
    return "| " + " | ".join(cells) + " |"


def _num(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def plot_sqnr(report: LayerReport, path: Path) -> Path | None:
    """SQNR of each compared node's output by its depth in the graph; None without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log.warning("no %s: matplotlib is not installed (pip install torchship[plot])", path.name)
        return None
    rows = sorted((r for r in report.rows if r.sqnr_db is not None), key=lambda r: r.origin.index)
    figure, axis = plt.subplots(figsize=(9, 4))
    depth = [r.origin.index for r in rows]
    axis.plot(depth, [r.sqnr_db for r in rows], marker=".", label="SQNR vs FP32")
    for field, marker, color, label in (
        ("added_sqnr_db", "x", "tab:red", "added SQNR"),
        ("alone_sqnr_db", "o", "tab:green", "output SQNR, only this layer quantized"),
    ):
        points = [
            (r.origin.index, getattr(r, field)) for r in rows if getattr(r, field) is not None
        ]
        if points:
            axis.scatter(*zip(*points, strict=True), marker=marker, color=color, label=label, s=18)
    for row in report.ranked()[:3]:
        value = row.alone_sqnr_db if row.alone_sqnr_db is not None else row.added_sqnr_db
        axis.annotate(row.origin.module or row.origin.node, (row.origin.index, value), fontsize=7)
    axis.set_xlabel("node depth (graph order)")
    axis.set_ylabel("dB")
    axis.set_title(f"{Path(report.quantized).name}: SQNR by depth")
    axis.legend()
    figure.tight_layout()
    with atomic_path(path, suffix=".png") as tmp:
        figure.savefig(tmp, dpi=110)
    plt.close(figure)
    return path


def layer_summary_into(
    out_dir: Path,
    fp32: Path,
    quantized: Path,
    data: DataSet | None,
    *,
    scratch: Path,
    threads: int | None = None,
    samples: int = 16,
    isolate_budget_s: float = 10.0,
) -> tuple[dict, str | None]:
    """The per-layer report of a quantize run: its files in `out_dir`, and (the summary for
    quantize_report.json, a warning or None). A failure here is a warning, never the run's.

    Kept to a few seconds on small models (it runs in every quantize): `samples` samples, the
    isolation within `isolate_budget_s`, no plot (`torchship debug quantize` draws it)."""
    try:
        feeds, described, random_inputs = feeds_for_report(data, data.inputs if data else (),
                                                           samples=samples)  # fmt: skip
        folder = Path(scratch) / "layers"
        folder.mkdir(exist_ok=True)
        report = layer_report(
            fp32, quantized, feeds, scratch=folder, data=described, random_inputs=random_inputs,
            threads=threads, isolate_budget_s=isolate_budget_s,
        )  # fmt: skip
        written = write_layer_files(report, out_dir, plot=False)
    except Exception as exc:  # a debugging aid: report it, keep the artifact
        reraise_interrupt(exc)
        return {"error": first_line(exc)}, f"per-layer report skipped: {first_line(exc)}"
    return {**report.summary(), "files": [p.name for p in written]}, None
