"""`torchship quantize MODEL.onnx`: static/dynamic INT8 or FP16 with an accuracy budget."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from rich.console import Console
from rich.text import Text

from torchship.calibration import METHODS, PRESETS, QuantizeOptions, QuantizeResult, quantize
from torchship.cli.flags import dump_json, progress
from torchship.cli.int8_search import add_int8_search_flags, print_latency_search, ptq_algos_from
from torchship.cli.quantize_pt2e import add_pt2e_flags, quantize_pt2e_command
from torchship.errors import EXIT_CHECK_FAILED, EXIT_OK, ConfigError
from torchship.quantize_pt2e import PT2E_TARGET_NAMES

__all__ = ["register_quantize"]


def register_quantize(commands) -> None:
    p = commands.add_parser(
        "quantize", help="INT8 (static/dynamic) or FP16 through ONNX Runtime, accuracy-checked"
    )
    p.add_argument(
        "model",
        metavar="MODEL",
        help="the FP32 ONNX model; with --target xnnpack|x86-inductor a model source or .pt2",
    )
    p.add_argument(
        "--calib", metavar="DATA", help=".npz/.npy, a directory of them, or module:function"
    )
    p.add_argument(
        "--target",
        default="auto",
        help=f"preset: auto, {', '.join(PRESETS.names())} (default: auto, from CPU/GPU facts); "
        f"PT2E: {', '.join(PT2E_TARGET_NAMES)} (a model source -> .pte / AOTInductor package)",
    )
    p.add_argument("--method", default="minmax", help=f"calibration: {', '.join(METHODS.names())}")
    p.add_argument("--mode", default="static", help="static | dynamic (dynamic needs no --calib)")
    p.add_argument("--precision", default="int8", help="int8 | fp16")
    p.add_argument("--eval", metavar="DATA", help="eval data (.npz; with `labels` for top-1/top-5)")
    p.add_argument(
        "--max-drop",
        type=float,
        default=1.0,
        metavar="PCT",
        help="allowed top-1 drop in percentage points (default 1.0)",
    )
    p.add_argument("--samples", type=int, default=None, help="calibration samples (seeded subset)")
    p.add_argument("--seed", type=int, default=0, help="seed of the --samples subset")
    p.add_argument("--max-fp32-nodes", type=int, default=None, help="cap on fallback nodes")
    p.add_argument("--no-bench", action="store_true", help="skip the FP32-vs-quantized timing")
    p.add_argument("--threads", type=int, default=None, help="intra-op threads for eval/timing")
    add_int8_search_flags(p)
    p.add_argument("--json", metavar="OUT", help="write the report as JSON ('-': stdout)")
    p.add_argument("-o", "--output", default=None, help="output directory or .onnx file")
    add_pt2e_flags(p)
    p.set_defaults(handler=_quantize)


def _quantize(args: argparse.Namespace, *, console: Console, argv: Sequence[str]) -> int:
    _check_json_path(args.json)
    if args.target in PT2E_TARGET_NAMES:
        return quantize_pt2e_command(args, console=console, argv=argv)
    options = QuantizeOptions(
        target=args.target,
        method=args.method,
        mode=args.mode,
        precision=args.precision,
        max_drop=args.max_drop,
        samples=args.samples,
        seed=args.seed,
        max_excluded=args.max_fp32_nodes,
        bench=not args.no_bench,
        threads=args.threads,
        latency_search=False if args.no_latency_search else None,
        latency_search_time_s=args.latency_search_time,
        ptq_algos=ptq_algos_from(args),
    )
    with progress(console) as step:
        step(f"quantizing {args.model}")
        result = quantize(
            args.model,
            args.output,
            calib=args.calib,
            eval_data=args.eval,
            options=options,
            command=argv,
        )
    if args.json:
        dump_json(args.json, result.report, console)
    if args.json != "-":
        _print_summary(console, result)
    return EXIT_OK if result.passed else EXIT_CHECK_FAILED


def _check_json_path(path: str | None) -> None:
    """Refuse an unwritable --json target before minutes of quantization, not after."""
    if path is None or path == "-":
        return
    target = Path(path)
    if target.is_dir():
        raise ConfigError(
            f"--json {path}: is a directory; give a file path such as {path}/report.json"
        )
    existing = next((p for p in target.parents if p.exists()), None)
    if existing is not None and not existing.is_dir():
        raise ConfigError(f"--json {path}: {existing} is a file, not a folder")


def _print_summary(console: Console, result: QuantizeResult) -> None:
    report = result.report
    accuracy, counts = report["accuracy"], report["op_counts"]
    preset = (report.get("preset") or {}).get("name")
    console.print(
        f"{result.artifact.path}  {report['mode']}"
        + (f"  preset {preset}, method {report['method']}" if preset else "")
    )
    console.print(
        f"accuracy: drop {accuracy['drop']:.2f} points (max {accuracy['max_drop']:g}), "
        f"agreement {100 * accuracy['agreement']:.2f}%, {accuracy['samples']} samples"
    )
    excluded = report["fallback"]["excluded_nodes"]
    if excluded:
        console.print(f"kept in FP32: {', '.join(excluded)}")
    console.print(
        f"ops after ORT optimization: {counts['integer_ops']} integer, {counts['qdq_left']} Q/DQ "
        f"left, {counts['float_compute_ops']} float compute"
    )
    timing = report.get("timing")
    if timing:
        console.print(
            f"p50 {timing['p50_ms']:.3f} ms vs FP32 {timing['fp32_p50_ms']:.3f} ms "
            f"(batch {timing['batch']}): {timing['speedup']:.2f}x"
        )
    print_latency_search(console, report)
    for warning in result.warnings:
        console.print(Text.assemble(("warning:", "bold yellow"), f" {warning}"))
    verdict = ("pass", "green") if result.passed else ("FAIL", "bold red")
    kept = "" if result.passed else " (artifact kept, marked)"
    console.print(Text.assemble("result: ", verdict, f"{kept}; manifest: {result.manifest_path}"))
