"""`torchship ship [pipeline.toml]` (a pipeline, or the embedded demo) and `torchship init`."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from rich.console import Console

from torchship.cli.flags import dump_json, progress
from torchship.cli.tables import release_line, ship_table
from torchship.errors import EXIT_OK, CheckFailedError, ConfigError
from torchship.files import atomic_write_text
from torchship.pipeline import (
    EXAMPLE_CONFIG,
    load_pipeline,
    require_pipeline,
    run_pipeline,
    ship_demo,
)
from torchship.runtimes import BenchConfig

__all__ = ["register_ship", "register_init"]


def register_ship(commands) -> None:
    p = commands.add_parser("ship", help="run the whole pipeline (no file: the embedded demo)")
    p.add_argument("config", nargs="?", help="pipeline.toml (`torchship init` writes one)")
    p.add_argument("-o", "--output", default="dist/demo", help="bundle directory")
    p.add_argument(
        "--min-time",
        type=float,
        default=1.0,
        metavar="S",
        help="minimum timed seconds per benchmark (default 1.0)",
    )
    p.add_argument("--threads", type=int, default=None, help="intra-op threads per runtime")
    p.add_argument("--json", metavar="OUT", help="also write the result rows as JSON ('-': stdout)")
    p.add_argument("--no-int8", action="store_true", help="demo: skip the INT8 rows")
    p.add_argument("--no-prune", action="store_true", help="demo: skip the pruned rows")
    p.add_argument(
        "--no-tune", action="store_true",
        help="demo: skip the deployment search (OpenVINO, AOTInductor, ExecuTorch rows)",
    )  # fmt: skip
    p.set_defaults(handler=_ship)


def _ship(args: argparse.Namespace, *, console: Console, argv: Sequence[str]) -> int:
    if args.config is not None:
        return _ship_pipeline(args.config, console=console, argv=argv, json_out=args.json)
    config = BenchConfig(batches=(8,), min_time_s=args.min_time, threads=args.threads)
    with progress(console) as step:
        report = ship_demo(
            args.output, bench_config=config, int8=not args.no_int8, prune=not args.no_prune,
            tune=not args.no_tune, command=argv, progress=step,
        )  # fmt: skip
    if args.json != "-":  # with --json -, stdout carries the JSON only
        console.print(ship_table(report.rows, batch=report.batch))
        if report.release is not None:
            console.print(release_line(report.release))
        console.print(f"bundle: {report.out_dir}/ (manifest.json, bench.json, report.json)")
    if args.json:
        dump_json(args.json, report.to_dict(), console)
    if not report.passed:
        raise CheckFailedError("an INT8 artifact missed its accuracy budget (marked in the bundle)")
    return EXIT_OK


def _ship_pipeline(
    path: str, *, console: Console, argv: Sequence[str], json_out: str | None
) -> int:
    """`torchship ship pipeline.toml`: run it, print the gates, exit 1 on a failed gate."""
    config = load_pipeline(path)
    with progress(console) as step:
        result = run_pipeline(config, command=argv, progress=step)
    if json_out != "-":  # stdout holds only the JSON then
        for gate in result.gates:
            console.print(f"{'pass' if gate.passed else 'FAIL'}  {gate.name}: {gate.detail}")
        if result.release is not None:
            console.print(release_line(result.release))
        console.print(f"bundle: {result.bundle}/ ({'passed' if result.passed else 'FAILED'})")
    if json_out:
        dump_json(json_out, result.to_dict(), console)
    require_pipeline(result)
    return EXIT_OK


def register_init(commands) -> None:
    p = commands.add_parser("init", help="write a commented example pipeline.toml")
    p.add_argument("path", nargs="?", default="pipeline.toml", help="where (default pipeline.toml)")
    p.add_argument("--force", action="store_true", help="overwrite an existing file")
    p.set_defaults(handler=_init)


def _init(args: argparse.Namespace, *, console: Console, argv: Sequence[str]) -> int:
    path = Path(args.path)
    if path.exists() and not args.force:
        raise ConfigError(f"{path}: exists; pass --force to overwrite it")
    atomic_write_text(path, EXAMPLE_CONFIG)
    console.print(f"wrote {path}; run it with `torchship ship {path}`")
    return EXIT_OK
