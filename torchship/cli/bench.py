"""`torchship bench ARTIFACT...` (latency as JSON or a baseline) and `torchship doctor`."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from rich.console import Console

from torchship.api import bench
from torchship.cli.flags import (
    add_baseline_flags,
    add_bench_flags,
    add_input_flags,
    bench_config_from_args,
    dump_json,
    progress,
    runtimes_from_args,
    specs_from_args,
)
from torchship.cli.tables import bench_table, doctor_table
from torchship.doctor import doctor_facts, doctor_rows
from torchship.errors import EXIT_OK
from torchship.regression.baselines import save_baseline

__all__ = ["register_bench", "register_doctor"]


def register_bench(commands) -> None:
    p = commands.add_parser("bench", help="benchmark artifacts on runtimes")
    p.add_argument("artifacts", nargs="+", metavar="ARTIFACT", help=".onnx, .ts/.pt or .pt2")
    add_bench_flags(p)
    p.add_argument("--json", metavar="OUT", help="write the torchship.bench/1 JSON ('-': stdout)")
    add_baseline_flags(p, save=True)
    add_input_flags(p)
    p.set_defaults(handler=_bench)


def _bench(args: argparse.Namespace, *, console: Console, argv: Sequence[str]) -> int:
    config = bench_config_from_args(args)
    with progress(console) as step:
        document = bench(
            args.artifacts,
            runtimes=runtimes_from_args(args),
            config=config,
            inputs=specs_from_args(args) or None,
            progress=step,
            model_batch=args.batch is None,
        )
    if args.json != "-":  # high-CV warnings are logged by the bench layer itself
        console.print(bench_table(document))
    if args.json:
        dump_json(args.json, document.to_dict(), console)
    if args.save_baseline:
        path = save_baseline(document, args.save_baseline, root=args.baseline_dir)
        if args.json != "-":
            console.print(f"baseline {args.save_baseline!r} saved to {path}")
    return EXIT_OK


def register_doctor(commands) -> None:
    p = commands.add_parser("doctor", help="what this machine can run: runtimes, CPU ISA, GPU")
    p.add_argument("--json", metavar="OUT", help="write the facts as JSON ('-': stdout)")
    p.set_defaults(handler=_doctor)


def _doctor(args: argparse.Namespace, *, console: Console, argv: Sequence[str]) -> int:
    facts = doctor_facts()
    if args.json:
        dump_json(args.json, facts, console)
    if args.json != "-":
        console.print(doctor_table(doctor_rows(facts)))
    return EXIT_OK
