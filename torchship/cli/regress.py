"""`torchship compare` (two bench results or baselines) and `torchship regress A B` (interleaved
A/B on this machine): latency verdicts, exit 1 on a regression."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from rich.console import Console

from torchship.cli.flags import (
    add_baseline_flags,
    add_input_flags,
    add_verdict_flags,
    dump_json,
    progress,
    specs_from_args,
    write_text,
)
from torchship.cli.tables import comparison_table
from torchship.errors import EXIT_CHECK_FAILED, EXIT_OK
from torchship.regression.baselines import load_baseline
from torchship.regression.documents import (
    DocumentComparison,
    compare_documents,
    comparison_junit,
    comparison_markdown,
)
from torchship.regression.regress import regress_artifacts
from torchship.regression.stats import CompareConfig

__all__ = ["register_compare", "register_regress"]


def register_compare(commands) -> None:
    p = commands.add_parser(
        "compare", help="faster/same/slower per row between two bench results or baselines"
    )
    p.add_argument("baseline", help="bench JSON file, or the name of a saved baseline")
    p.add_argument("candidate", help="bench JSON file, or the name of a saved baseline")
    add_verdict_flags(p)
    p.add_argument("--min-samples", type=int, default=20, help="fewer samples: inconclusive")
    p.add_argument(
        "--strict", action="store_true", help="refuse results from different fingerprints"
    )
    add_baseline_flags(p)
    p.set_defaults(handler=_compare)


def _compare(args: argparse.Namespace, *, console: Console, argv: Sequence[str]) -> int:
    root = args.baseline_dir
    baseline = load_baseline(args.baseline, root=root, strict=args.strict)
    candidate = load_baseline(args.candidate, root=root, strict=args.strict)
    config = CompareConfig(threshold_pct=args.threshold, min_samples=args.min_samples)
    result = compare_documents(baseline, candidate, config=config, strict=args.strict)
    return _emit(result, args, console)


def register_regress(commands) -> None:
    p = commands.add_parser(
        "regress",
        help="time A and B interleaved on this machine; exit 1 when B is slower",
        description="Interleaved A/B: both artifacts are timed in alternating short rounds in "
        "one run, one session open at a time, so machine drift and noise hit both alike. This "
        "is the way to gate on shared, noisy CI machines, where two separate runs differ more "
        "than the regressions worth catching.",
    )
    p.add_argument("a", metavar="A", help="the reference artifact")
    p.add_argument("b", metavar="B", help="the candidate artifact")
    p.add_argument("--runtime", help="runtime for both (default: each format's own)")
    p.add_argument("--runtime-b", help="another runtime for B (compare runtimes)")
    p.add_argument("--batch", type=int, default=None, help="batch size (default: A's)")
    p.add_argument("--threads", type=int, default=None, help="intra-op threads")
    p.add_argument("--rounds", type=int, default=12, help="A/B rounds (default 12)")
    p.add_argument("--iters", type=int, default=25, help="timed calls per round (default 25)")
    p.add_argument("--warmup", type=int, default=5, help="untimed calls per round (default 5)")
    add_verdict_flags(p)
    add_input_flags(p)
    p.set_defaults(handler=_regress)


def _regress(args: argparse.Namespace, *, console: Console, argv: Sequence[str]) -> int:
    with progress(console) as step:
        step(f"timing {args.a} and {args.b} in {args.rounds} interleaved rounds")
        result = regress_artifacts(
            args.a, args.b, runtime=args.runtime, runtime_b=args.runtime_b, batch=args.batch,
            threads=args.threads, rounds=args.rounds, iters=args.iters, warmup=args.warmup,
            threshold_pct=args.threshold, inputs=specs_from_args(args) or None,
        )  # fmt: skip
    return _emit(result, args, console)


def _emit(result: DocumentComparison, args: argparse.Namespace, console: Console) -> int:
    """The verdicts as the flags ask (a table unless a writer has stdout); the exit code."""
    to_stdout = "-" in (args.json, args.markdown, args.junit)
    if not to_stdout:
        console.print(comparison_table(result))
    if args.json:
        dump_json(args.json, result.to_dict(), console)
    for path, text in ((args.markdown, comparison_markdown), (args.junit, comparison_junit)):
        if path:
            write_text(path, text(result), console)
    if not to_stdout:
        for row in result.inconclusive:
            console.print(f"inconclusive (not judged): {row.label}: {row.comparison.note}")
        slower = ", ".join(r.label for r in result.regressions)
        console.print(f"regression: {slower}" if slower else "no regression")
    return EXIT_OK if result.passed else EXIT_CHECK_FAILED
