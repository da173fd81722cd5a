"""`torchship quantize MODEL --target xnnpack|x86-inductor`: PT2E INT8 of a model source."""

from __future__ import annotations

import argparse

from rich.console import Console
from rich.text import Text

from torchship.cli.flags import (
    add_input_flags,
    add_weights_flags,
    dump_json,
    progress,
    specs_from_args,
)
from torchship.errors import EXIT_CHECK_FAILED, EXIT_OK, ConfigError
from torchship.quantize_pt2e import quantize_pt2e

__all__ = ["add_pt2e_flags", "quantize_pt2e_command"]


def add_pt2e_flags(parser: argparse.ArgumentParser) -> None:
    """The model-source flags a PT2E target needs (an ONNX file carries its own inputs)."""
    add_input_flags(parser)
    add_weights_flags(parser.add_argument_group("PT2E targets (xnnpack, x86-inductor)"))


def quantize_pt2e_command(args: argparse.Namespace, *, console: Console, argv) -> int:
    """Run `quantize` for a PT2E target with the flags `torchship.cli.quantize` registered."""
    with progress(console) as step:
        step(f"quantizing {args.model} for {args.target}")
        result = quantize_pt2e(
            args.model,
            args.output,
            target=args.target,
            calib=_required_calib(args),
            eval_data=args.eval,
            max_drop=args.max_drop,
            max_excluded=args.max_fp32_nodes,
            max_fallback_time_s=args.max_fallback_time,
            inputs=specs_from_args(args) or None,
            weights=args.weights,
            trust_pickle=args.trust_pickle,
            task=args.task,
            config=args.config,
            samples=args.samples,
            seed=args.seed,
            threads=args.threads,
            bench=not args.no_bench,
            command=argv,
        )
    if args.json:
        dump_json(args.json, result.report, console)
    if args.json != "-":
        _print_summary(console, result)
    return EXIT_OK if result.passed else EXIT_CHECK_FAILED


def _required_calib(args: argparse.Namespace) -> str:
    if args.calib is None:
        raise ConfigError(f"--target {args.target}: PT2E INT8 needs calibration data: --calib DATA")
    return args.calib


def _print_summary(console: Console, result) -> None:
    report, artifact = result.report, result.artifact
    console.print(f"{artifact.path}  {artifact.format.value} int8 ({report['target']})")
    parity = report["parity"]
    console.print(
        f"parity vs FP32 eager: min cosine {parity['min_cosine']:.5f} "
        f"(min {parity['min_cosine_required']}), {parity['comparisons']} comparisons"
    )
    accuracy = report["accuracy"]
    if accuracy:
        console.print(
            f"top-1 {100 * accuracy['top1']:.2f}% vs FP32 {100 * accuracy['fp32_top1']:.2f}%: "
            f"drop {accuracy['drop']:.2f} points (max {accuracy['max_drop']:g}), "
            f"{accuracy['samples']} samples"
        )
    fallback = report.get("fallback")
    if fallback and fallback["tried"] > 1:
        kept = fallback["excluded_nodes"]
        console.print(
            f"fallback: {fallback['tried']} tried, {fallback['stopped']}; "
            f"kept in FP32: {', '.join(kept) if kept else 'none'}"
        )
    timing = report.get("timing")
    if timing:
        console.print(
            f"timing on {timing['runtime']} (batch {timing['batch']}): INT8 "
            f"{timing['p50_ms']:.3f} ms vs FP32 {timing['fp32_p50_ms']:.3f} ms, "
            f"{timing['speedup']:.2f}x ({timing['timed']})"
        )
    for warning in result.warnings:
        console.print(Text.assemble(("warning:", "bold yellow"), f" {warning}"))
    verdict = ("pass", "green") if result.passed else ("FAIL", "bold red")
    console.print(Text.assemble("result: ", verdict, f"; manifest: {result.manifest_path}"))
