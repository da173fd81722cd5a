"""Flags and output of the latency-aware INT8 search and the PTQ algorithms (`quantize`)."""

from __future__ import annotations

import argparse

from rich.console import Console
from rich.table import Table

__all__ = ["add_int8_search_flags", "ptq_algos_from", "print_latency_search"]


def add_int8_search_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--no-latency-search",
        action="store_true",
        help="skip the measured search for regions to keep in FP32 (on by default for CPU "
        "presets; it ships FP32 when no INT8 candidate is faster)",
    )
    p.add_argument(
        "--latency-search-time",
        type=float,
        default=None,
        metavar="S",
        help="time bound of the latency search in seconds (default 30)",
    )
    p.add_argument(
        "--ptq-algos",
        default=None,
        metavar="LIST",
        help="cle,bias-correction or none (default: tried when the accuracy budget is missed)",
    )
    p.add_argument(
        "--cle", action="store_true", help="cross-layer equalization (= --ptq-algos cle)"
    )
    p.add_argument(
        "--bias-correction", action="store_true", help="bias correction after quantization"
    )


def ptq_algos_from(args: argparse.Namespace):
    """The PTQ algorithm request: None (automatic) unless a flag names some."""
    names = [] if args.ptq_algos is None else [args.ptq_algos]
    names += ["cle"] if args.cle else []
    names += ["bias-correction"] if args.bias_correction else []
    return ",".join(names) if names else None


def print_latency_search(console: Console, report: dict) -> None:
    ptq = report.get("ptq_algorithms")
    if ptq and len(ptq.get("tried", [])) > 1:
        tried = ", ".join(
            f"{'+'.join(t['algos']) or 'plain'} drop {t['drop']:.2f}" for t in ptq["tried"]
        )
        console.print(f"PTQ algorithms: {tried}; chose {'+'.join(ptq['chosen']) or 'plain'}")
    search = report.get("latency_search") or {}
    if not search.get("ran"):
        return
    table = Table(title=f"latency search (batch {search['batch']}, {search['elapsed_s']:.0f} s)")
    for column in ("candidate", "kept in FP32", "INT8/FP32 latency", "drop", "verdict"):
        table.add_column(column)
    for row in search["table"]:
        ratio = row["latency_ratio_vs_fp32"]
        table.add_row(
            row["candidate"],
            ", ".join(row["excluded_regions"]) or "-",
            "-" if ratio is None else f"{ratio:.3f}",
            "-" if row["drop"] is None else f"{row['drop']:.2f}",
            row["verdict"],
        )
    console.print(table)
    shipped = search["shipped"].upper()
    console.print(f"latency search: ships {shipped}: {search['reason']}")
