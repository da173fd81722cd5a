"""`torchship debug quantize|reduce`: which layer costs INT8 accuracy or time; which node of an
export is wrong on a runtime."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

from torchship.artifact import Artifact
from torchship.calibration.debug_layers import (
    DEFAULT_SAMPLES,
    LayerReport,
    compare_files,
    feeds_for_report,
)
from torchship.calibration.layer_files import write_layer_files
from torchship.cli.flags import dump_json, progress
from torchship.data import open_data
from torchship.errors import EXIT_CHECK_FAILED, EXIT_OK, ConfigError
from torchship.exporter.debug_reduce import ReduceResult, reduce_model
from torchship.runtimes.base import require_available
from torchship.runtimes.tolerance import TOLERANCES, tolerance_for

__all__ = ["register_debug"]


def register_debug(commands) -> None:
    p = commands.add_parser(
        "debug", help="per-layer INT8 error; find the node a runtime computes wrong"
    )
    sub = p.add_subparsers(dest="debug_command", required=True, metavar="WHAT")
    _register_quantize(sub)
    _register_reduce(sub)


def _add_data_flags(p: argparse.ArgumentParser, *, what: str) -> None:
    p.add_argument(
        "--data", metavar="DATA", help=f"{what}: .npz/.npy, a folder of them or module:function "
        "(default: random inputs, a last resort)",
    )  # fmt: skip
    p.add_argument(
        "--samples", type=int, default=None,
        help=f"samples compared (default {DEFAULT_SAMPLES}: all intermediates are held)",
    )  # fmt: skip
    p.add_argument("--seed", type=int, default=0, help="seed of random inputs / subsets")
    p.add_argument("--json", metavar="OUT", help="also write the report as JSON ('-': stdout)")


# --- debug quantize ---------------------------------------------------------------------------


def _register_quantize(sub) -> None:
    p = sub.add_parser(
        "quantize", help="per-layer SQNR/cosine of a quantized model vs FP32, and node latency"
    )
    p.add_argument("fp32", metavar="FP32.onnx", help="the FP32 model")
    p.add_argument("quantized", metavar="INT8.onnx", help="its quantized (or FP16) version")
    _add_data_flags(p, what="inputs")
    p.add_argument("--top", type=int, default=15, help="rows in the console table (default 15)")
    p.add_argument("--no-profile", action="store_true", help="skip the per-node ORT profile")
    p.add_argument(
        "--no-isolate", action="store_true",
        help="skip quantizing each layer alone (one model run per layer, at most 60 s)",
    )  # fmt: skip
    p.add_argument("--threads", type=int, default=None, help="intra-op threads for the profile")
    p.add_argument(
        "--min-sqnr", type=float, default=None, metavar="DB",
        help="exit 1 when an output's SQNR vs FP32 is below DB",
    )  # fmt: skip
    p.add_argument("-o", "--output", help="folder for layers.json/.md/.png (default: beside INT8)")
    p.set_defaults(handler=_debug_quantize)


def _debug_quantize(args: argparse.Namespace, *, console: Console, argv: Sequence[str]) -> int:
    if args.samples is not None and args.samples < 1:
        raise ConfigError(f"--samples {args.samples}: must be >= 1")
    if args.top < 0:
        raise ConfigError(f"--top {args.top}: must be >= 0")
    quantized = Path(args.quantized)
    out = Path(args.output) if args.output else quantized.parent / f"{quantized.stem}-layers"
    if out.exists() and not out.is_dir():
        raise ConfigError(f"-o {out}: is a file; give a folder")
    with progress(console) as step:
        step(f"comparing {quantized.name} with {Path(args.fp32).name} layer by layer")
        report = compare_files(
            args.fp32, quantized, data=args.data, samples=args.samples, seed=args.seed,
            profile=not args.no_profile, isolate=not args.no_isolate, threads=args.threads,
        )  # fmt: skip
        written = write_layer_files(report, out)
    if args.json:
        dump_json(args.json, report.to_dict(), console)
    if args.json != "-":
        _print_layers(console, report, top=args.top)
        if not any(p.suffix == ".png" for p in written):
            console.print("plot skipped: matplotlib is not installed (pip install torchship[plot])")
        console.print(f"written: {', '.join(str(p) for p in written)}")
    low = [
        name
        for name, v in report.outputs.items()
        if args.min_sqnr is not None and (v["sqnr_db"] or 0.0) < args.min_sqnr
    ]
    if low:
        console.print(Text(f"FAIL: output SQNR below {args.min_sqnr} dB: {', '.join(low)}", "red"))
        return EXIT_CHECK_FAILED
    return EXIT_OK


def _print_layers(console: Console, report: LayerReport, *, top: int) -> None:
    if report.random_inputs:
        console.print(
            Text.assemble(
                ("warning:", "bold yellow"),
                f" no --data: {report.data}; errors on random inputs say little about real data",
            )
        )
    for name, value in report.outputs.items():
        console.print(
            f"output {name}: SQNR {_num(value['sqnr_db'])} dB, cosine "
            f"{_num(value['cosine'], 5)} ({report.data})"
        )
    table = Table(
        box=box.SIMPLE_HEAD,
        title="worst layers first: output SQNR with only that layer quantized (alone), the SQNR "
        "of the noise it adds (added), its output vs FP32 (SQNR, cosine)",
    )
    for column in ("#", "module", "node", "op", "alone dB", "added dB", "SQNR dB", "cosine",
                   "weight dB", "FP32 µs", "quant µs"):  # fmt: skip
        table.add_column(column, justify="right" if column[0] in "#aScwFq" else "left")
    for rank, row in enumerate(report.ranked()[:top], 1):
        origin = row.origin
        table.add_row(
            str(rank), origin.module or "-", origin.node, origin.op_type,
            _num(row.alone_sqnr_db), _num(row.added_sqnr_db), _num(row.sqnr_db),
            _num(row.cosine, 5),
            _num(row.weight_sqnr_db), _num(row.fp32_us, 1), _num(row.quant_us, 1),
        )  # fmt: skip
    console.print(table)
    if report.totals_us:
        totals = report.totals_us
        console.print(
            f"kernel time per run (ORT profiler): FP32 {totals['fp32']:.1f} µs, quantized "
            f"{totals['quantized']:.1f} µs"
        )


def _num(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


# --- debug reduce -----------------------------------------------------------------------------


def _register_reduce(sub) -> None:
    p = sub.add_parser(
        "reduce", help="find the first node whose output mismatches the reference on a runtime"
    )
    p.add_argument("model", metavar="MODEL.onnx", help="the ONNX model that fails parity")
    p.add_argument(
        "--reference", metavar="DIR",
        help="reference I/O folder (reference_inputs.json + reference_outputs.json, as "
        "`torchship export` writes)",
    )  # fmt: skip
    p.add_argument(
        "--reference-model", metavar="GOOD.onnx",
        help="a known-good ONNX model whose intermediates are the truth (default: MODEL "
        "itself, unoptimized on ONNX Runtime)",
    )  # fmt: skip
    _add_data_flags(p, what="inputs when there is no --reference")
    p.add_argument("--runtime", default="ort-cpu", help="runner to check (default ort-cpu)")
    p.add_argument(
        "--tolerance", default="fp32",
        help=f"tolerance profile: {', '.join(TOLERANCES.names())} (default fp32)",
    )  # fmt: skip
    p.add_argument("-o", "--output", help="folder for the culprit alone + its reference I/O")
    p.set_defaults(handler=_debug_reduce)


def _debug_reduce(args: argparse.Namespace, *, console: Console, argv: Sequence[str]) -> int:
    if args.reference is None and args.reference_model is None:
        raise ConfigError("debug reduce needs --reference DIR and/or --reference-model GOOD.onnx")
    profile = tolerance_for(args.tolerance)
    require_available(args.runtime)  # exit 3 naming what is available
    feeds = None
    if args.reference is None:
        feeds, described = _reduce_feeds(args)
        if "random" in described:
            console.print(Text.assemble(("warning:", "bold yellow"), f" no --data: {described}"))
    with progress(console) as step:
        step(f"checking {args.model} on {args.runtime}")
        result = reduce_model(
            args.model, reference=args.reference, reference_model=args.reference_model,
            feeds=feeds, runtime=args.runtime, profile=profile, out=args.output,
        )  # fmt: skip
    if args.json:
        dump_json(args.json, result.to_dict(), console)
    if args.json != "-":
        _print_reduce(console, result)
    return EXIT_OK if result.outputs_match else EXIT_CHECK_FAILED


def _reduce_feeds(args: argparse.Namespace):
    source = Artifact.open(args.model)
    data = None if args.data is None else open_data(args.data, inputs=source.inputs)
    samples = args.samples or 8
    feeds, described, _ = feeds_for_report(data, source.inputs, samples=samples, seed=args.seed)
    return feeds, described


def _print_reduce(console: Console, result: ReduceResult) -> None:
    failed = [c for c in result.outputs if not c.passed]
    if not failed:
        console.print(
            f"all {len(result.outputs)} output comparisons match ({result.reference}) on "
            f"{result.runtime}"
        )
        return
    worst = failed[0]
    console.print(
        f"outputs mismatch on {result.runtime}: {len(failed)} of {len(result.outputs)} "
        f"comparisons fail vs {result.reference} (e.g. {worst.output} in {worst.case}: max abs "
        f"{worst.max_abs:.3g}, cosine {worst.cosine:.5f})"
    )
    if result.culprit is None:
        console.print(Text(f"node not found: {result.note}", "yellow"))
        return
    culprit, comparison = result.culprit, result.comparison
    where = culprit.module or "the model's own forward (no submodule recorded)"
    console.print(
        Text.assemble(
            ("first mismatching node: ", "bold red"),
            f"{culprit.node} ({culprit.op_type}, node {culprit.index} in topological order), "
            f"PyTorch module: {where}",
        )
    )
    if comparison is not None:
        detail = comparison.reason or (
            f"max abs {comparison.max_abs:.3g}, cosine {comparison.cosine:.5f}"
        )
        console.print(f"  output {comparison.output}: {detail}; {result.checked} tensors checked")
    if result.alone_mismatches is not None:
        alone = "still mismatches" if result.alone_mismatches else "matches (upstream effect?)"
        console.print(f"  run alone on the reference's inputs it {alone}")
    if result.repro:
        console.print(f"  repro: {', '.join(result.repro)}")
