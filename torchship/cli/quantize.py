"""`torchship quantize MODEL.onnx`: static/dynamic INT8 or FP16 with an accuracy budget."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from rich.console import Console
from rich.text import Text

from torchship.calibration import METHODS, PRESETS, QuantizeOptions, QuantizeResult, quantize
from torchship.calibration.fallback import DEFAULT_MAX_FALLBACK_TIME_S
from torchship.calibration.metrics import Metric
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
        default=None,
        metavar="PCT",
        help="top1/agreement budget: allowed drop in percentage points (default 1.0)",
    )
    add_metric_flags(p)
    p.add_argument("--samples", type=int, default=None, help="calibration samples (seeded subset)")
    p.add_argument("--seed", type=int, default=0, help="seed of the --samples subset")
    p.add_argument("--max-fp32-nodes", type=int, default=None, help="cap on fallback nodes")
    p.add_argument(
        "--max-fallback-time",
        type=float,
        default=DEFAULT_MAX_FALLBACK_TIME_S,
        metavar="SECONDS",
        help=f"time limit of the accuracy fallback (default {DEFAULT_MAX_FALLBACK_TIME_S:g})",
    )
    p.add_argument("--no-bench", action="store_true", help="skip the FP32-vs-quantized timing")
    p.add_argument("--threads", type=int, default=None, help="intra-op threads for eval/timing")
    add_int8_search_flags(p)
    p.add_argument(
        "--no-transformer-opt",
        action="store_true",
        help="skip ONNX Runtime's transformer optimizer (on by default for encoder graphs)",
    )
    p.add_argument(
        "--smoothquant",
        default="auto",
        metavar="auto|off|ALPHA",
        help="SmoothQuant for encoders with --calib: auto searches alpha and keeps it only if "
        "cosine on the calibration data improves (default auto)",
    )
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
        metric=args.metric,
        min_cosine=args.min_cosine,
        min_sqnr=args.min_sqnr,
        max_relerr=args.max_relerr,
        max_fallback_time_s=args.max_fallback_time,
        bench=not args.no_bench,
        threads=args.threads,
        latency_search=False if args.no_latency_search else None,
        latency_search_time_s=args.latency_search_time,
        ptq_algos=ptq_algos_from(args),
        transformer_opt=not args.no_transformer_opt,
        smoothquant=args.smoothquant,
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


def _print_transformer(console: Console, transformer: dict | None) -> None:
    if not transformer:
        return
    opt = transformer["optimizer"]
    if opt["applied"]:
        fused = ", ".join(f"{k} {v}" for k, v in opt["fusions"].items())
        console.print(f"transformer optimizer: fused {fused}")
    else:
        console.print(f"transformer optimizer: skipped ({opt['reason']})")
    sq = transformer.get("smoothquant") or {}
    if sq.get("used"):
        console.print(f"SmoothQuant: alpha {sq['alpha']:g} (best of {len(sq['search'])} on calib)")
    elif sq:
        console.print(f"SmoothQuant: not used ({sq.get('reason')})")


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
    console.print(accuracy_line(accuracy))
    _print_transformer(console, report.get("transformer"))
    fallback = report["fallback"]
    excluded = fallback["excluded_nodes"]
    if excluded:
        console.print(f"kept in FP32: {len(excluded)} nodes: {', '.join(excluded)}")
    if fallback["tried"] > 1:
        console.print(f"fallback: {fallback['tried']} tried, {fallback['stopped']}")
    console.print(
        f"ops after ORT optimization: {counts['integer_ops']} integer, {counts['qdq_left']} Q/DQ "
        f"left, {counts['float_compute_ops']} float compute"
    )
    worst = (report.get("layers") or {}).get("worst")
    if worst:
        layer = worst[0]
        figure = (
            f"output SQNR {layer['alone_sqnr_db']} dB when only it is quantized"
            if layer["alone_sqnr_db"] is not None
            else f"it adds noise at {layer['added_sqnr_db']} dB SQNR"
        )
        console.print(
            f"costliest layer: {layer['module'] or layer['node']} ({layer['op_type']}), "
            f"{figure}; per layer: layers.md"
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
    failures = report.get("failures") or []
    kept = "" if result.passed else " (artifact kept, marked)"
    if failures:
        kept = f": {failures[0].split(': ', 1)[0]}{kept}"
    console.print(Text.assemble("result: ", verdict, f"{kept}; manifest: {result.manifest_path}"))


def add_metric_flags(parser: argparse.ArgumentParser) -> None:
    """The accuracy measure and the budget of each (docs/design.md, "Accuracy measures")."""
    metrics = ", ".join(m.value for m in Metric)
    parser.add_argument(
        "--metric",
        default=None,
        help=f"accuracy measure: auto (from the output: logits, embedding, tensor), {metrics}",
    )
    parser.add_argument(
        "--min-cosine", type=float, default=None, help="cosine budget: mean cosine (default 0.99)"
    )
    parser.add_argument(
        "--min-sqnr", type=float, default=None, metavar="DB", help="sqnr budget (default 20 dB)"
    )
    parser.add_argument(
        "--max-relerr", type=float, default=None, help="relerr budget (default 0.1)"
    )


def accuracy_line(accuracy: dict) -> str:
    """One line: the metric, its value against the budget, the other measures beside it."""
    metric, n = accuracy["metric"], f"{accuracy['samples']} samples"
    verdict = "within" if accuracy["passed"] else "OUTSIDE"
    if metric in ("top1", "agreement"):
        drop = 100 * (1 - accuracy["agreement"]) if metric == "agreement" else accuracy["drop"]
        head = f"accuracy ({metric}): drop {drop:.2f} points, {verdict} {accuracy['budget']:g}"
        return f"{head}; agreement {100 * accuracy['agreement']:.2f}%, {n}"
    value = accuracy["value"]
    shown = f"{value:.1f} dB" if metric == "sqnr" else f"{value:.5f}"
    head = f"accuracy ({metric}): {shown}, {verdict} budget {accuracy['budget']:g}"
    return (
        f"{head} ({accuracy['chosen_by']}); cosine mean {accuracy['cosine']:.5f} min "
        f"{accuracy['min_cosine']:.5f}, SQNR {accuracy['sqnr_db']:.1f} dB, {n}"
    )
