"""`torchship tune MODEL --calib D --eval D`: the fastest verified runtime x precision."""

from __future__ import annotations

import argparse

from rich.console import Console
from rich.text import Text

from torchship.calibration.budget import BudgetOptions
from torchship.cli.flags import dump_json, progress, specs_from_args
from torchship.cli.quantize import add_metric_flags
from torchship.cli.quantize_pt2e import add_pt2e_flags
from torchship.cli.tables import tune_table
from torchship.errors import EXIT_CHECK_FAILED, EXIT_OK
from torchship.sources import load_model
from torchship.tune import DEFAULT_MAX_DROP, tune_model

__all__ = ["register_tune"]


def register_tune(commands) -> None:
    p = commands.add_parser(
        "tune", help="build, verify and time every runtime x precision; pick the fastest verified"
    )
    p.add_argument("model", help="demo | pkg.module:factory | file.py:factory | model.pt2")
    p.add_argument("--calib", required=True, metavar="DATA", help="calibration data for INT8")
    p.add_argument("--eval", required=True, metavar="DATA", help="held-out data (labels optional)")
    p.add_argument(
        "--max-drop", type=float, default=None, metavar="PCT",
        help="top1/agreement budget: allowed drop vs FP32 eager, percentage points "
        f"(default {DEFAULT_MAX_DROP:g})",
    )  # fmt: skip
    add_metric_flags(p)
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
    # a bad metric or limit is exit 2 here, before the model loads
    budget = BudgetOptions(
        metric=args.metric, max_drop=args.max_drop, min_cosine=args.min_cosine,
        min_sqnr=args.min_sqnr, max_relerr=args.max_relerr,
    )  # fmt: skip
    model = load_model(
        args.model, inputs=specs_from_args(args) or None, weights=args.weights,
        trust_pickle=args.trust_pickle, task=args.task, config=args.config,
    )  # fmt: skip
    with progress(console) as step:
        step(f"tuning {args.model}")
        report = tune_model(
            model, args.output, calib=args.calib, eval_data=args.eval, budget=budget,
            batch=args.batch, threads=args.threads, min_time_s=args.min_time,
            time_budget_s=args.time_budget, command=argv,
        )  # fmt: skip
    if args.json:
        dump_json(args.json, report.to_dict(), console)
    if args.json != "-":
        console.print(tune_table(report))
        for warning in report.warnings:
            console.print(Text.assemble(("warning:", "bold yellow"), f" {warning}"))
    return EXIT_OK if report.chosen is not None else EXIT_CHECK_FAILED
