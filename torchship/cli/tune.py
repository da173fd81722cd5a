"""`torchship tune MODEL --calib D --eval D`: the fastest verified runtime x precision."""

from __future__ import annotations

import argparse

from rich.console import Console
from rich.table import Table

from torchship.errors import EXIT_CHECK_FAILED, EXIT_OK

__all__ = ["register"]


def register(commands) -> None:
    from torchship.cli.quantize_pt2e import add_pt2e_flags

    p = commands.add_parser(
        "tune", help="build, verify and time every runtime x precision; pick the fastest verified"
    )
    p.add_argument("model", help="demo | pkg.module:factory | file.py:factory | model.pt2")
    p.add_argument("--calib", required=True, metavar="DATA", help="calibration data for INT8")
    p.add_argument("--eval", required=True, metavar="DATA", help="held-out data (labels optional)")
    p.add_argument(
        "--max-drop", type=float, default=0.5, metavar="PCT",
        help="allowed top-1 drop vs FP32 eager, percentage points (default 0.5)",
    )  # fmt: skip
    p.add_argument("--batch", type=int, default=8, help="batch the candidates are ranked at")
    p.add_argument("--threads", type=int, default=None, help="intra-op threads per runtime")
    p.add_argument("--min-time", type=float, default=1.0, metavar="S", help="timed s per run")
    p.add_argument(
        "--time-budget", type=float, default=None, metavar="S", help="stop trying after S"
    )
    p.add_argument("--json", metavar="OUT", help="also write the report as JSON ('-': stdout)")
    p.add_argument("-o", "--output", required=True, help="folder for the artifacts and report")
    add_pt2e_flags(p)
    p.set_defaults(handler=_tune)


def _tune(args: argparse.Namespace, *, console: Console, argv) -> int:
    from torchship.cli.commands import progress, specs_from_args
    from torchship.cli.main import dump_json
    from torchship.sources import load_model
    from torchship.tune import tune_model

    model = load_model(
        args.model, inputs=specs_from_args(args) or None, weights=args.weights,
        trust_pickle=args.trust_pickle,
    )  # fmt: skip
    with progress(console) as step:
        step(f"tuning {args.model}")
        report = tune_model(
            model, args.output, calib=args.calib, eval_data=args.eval, max_drop=args.max_drop,
            batch=args.batch, threads=args.threads, min_time_s=args.min_time,
            time_budget_s=args.time_budget, command=argv,
        )  # fmt: skip
    if args.json:
        dump_json(args.json, report.to_dict(), console)
    if args.json != "-":
        console.print(_table(report))
    return EXIT_OK if report.chosen is not None else EXIT_CHECK_FAILED


def _table(report) -> Table:
    table = Table(title=f"candidates at batch {report.batch} (max drop {report.max_drop:g} points)")
    for column in ("candidate", "runtime", "precision", "p50 ms", f"vs {report.reference}", "drop"):
        table.add_column(column)
    table.add_column("outcome")
    for r in report.results:
        table.add_row(
            r.candidate.name, r.candidate.runtime,
            str(r.facts.get("inference_precision", r.candidate.precision)),
            "" if r.p50_ms is None else f"{r.p50_ms:.3f}",
            "" if r.speedup is None else f"{r.speedup:.2f}x",
            "" if r.drop is None else f"{r.drop:.2f}",
            f"{r.outcome.value}: {r.reason}",
        )  # fmt: skip
    return table
