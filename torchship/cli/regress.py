"""Commands `compare`, `regress`, `verify` and `init` (latency regression and release bundles)."""

from __future__ import annotations

import argparse
from pathlib import Path

from rich.console import Console

from torchship.errors import EXIT_CHECK_FAILED, EXIT_OK, ConfigError

__all__ = ["register", "save_baseline_from_args", "ship_pipeline"]


def register(commands) -> None:
    _register_compare(commands)
    _register_regress(commands)
    _register_verify(commands)
    _register_init(commands)


def _add_verdict_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--threshold", type=float, default=5.0, metavar="PCT",
        help="relative slowdown that counts as a regression, in percent (default 5)",
    )  # fmt: skip
    p.add_argument("--json", metavar="OUT", help="write the verdicts as JSON ('-': stdout)")
    p.add_argument("--markdown", metavar="OUT", help="write a Markdown table ('-': stdout)")
    p.add_argument("--junit", metavar="OUT", help="write JUnit XML for CI ('-': stdout)")


def _register_compare(commands) -> None:
    p = commands.add_parser(
        "compare", help="faster/same/slower per row between two bench results or baselines"
    )
    p.add_argument("baseline", help="bench JSON file, or the name of a saved baseline")
    p.add_argument("candidate", help="bench JSON file, or the name of a saved baseline")
    _add_verdict_flags(p)
    p.add_argument("--min-samples", type=int, default=20, help="fewer samples: inconclusive")
    p.add_argument(
        "--strict", action="store_true", help="refuse results from different fingerprints"
    )
    p.add_argument("--baseline-dir", help="baselines folder (default $TORCHSHIP_BASELINES)")
    p.set_defaults(handler=_compare)


def _compare(args, *, console: Console, argv) -> int:
    from torchship.regression.baselines import load_baseline
    from torchship.regression.documents import compare_documents
    from torchship.regression.stats import CompareConfig

    root = args.baseline_dir
    baseline = load_baseline(args.baseline, root=root, strict=args.strict)
    candidate = load_baseline(args.candidate, root=root, strict=args.strict)
    config = CompareConfig(threshold_pct=args.threshold, min_samples=args.min_samples)
    result = compare_documents(baseline, candidate, config=config, strict=args.strict)
    return _emit(result, args, console)


def _emit(result, args, console: Console) -> int:
    from torchship.cli.main import dump_json
    from torchship.regression.documents import (
        comparison_junit,
        comparison_markdown,
        comparison_table,
    )

    to_stdout = "-" in (args.json, args.markdown, args.junit)
    if not to_stdout:
        console.print(comparison_table(result))
    if args.json:
        dump_json(args.json, result.to_dict(), console)
    for path, text in ((args.markdown, comparison_markdown), (args.junit, comparison_junit)):
        if path:
            _write_text(path, text(result), console)
    if not to_stdout:
        for row in result.inconclusive:
            console.print(f"inconclusive (not judged): {row.label}: {row.comparison.note}")
        slower = ", ".join(r.label for r in result.regressions)
        console.print(f"regression: {slower}" if slower else "no regression")
    return EXIT_OK if result.passed else EXIT_CHECK_FAILED


def _write_text(path: str, text: str, console: Console) -> None:
    from torchship.files import atomic_write_text

    if path == "-":
        console.out(text, end="", highlight=False)
    else:
        atomic_write_text(path, text)


# --- regress ----------------------------------------------------------------------------------


def _register_regress(commands) -> None:
    from torchship.cli.commands import add_input_flags

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
    _add_verdict_flags(p)
    add_input_flags(p)
    p.set_defaults(handler=_regress)


def _regress(args, *, console: Console, argv) -> int:
    from torchship.cli.commands import progress, specs_from_args

    with progress(console) as step:
        step(f"timing {args.a} and {args.b} in {args.rounds} interleaved rounds")
        result = regress_artifacts(
            args.a, args.b, runtime=args.runtime, runtime_b=args.runtime_b, batch=args.batch,
            threads=args.threads, rounds=args.rounds, iters=args.iters, warmup=args.warmup,
            threshold_pct=args.threshold, inputs=specs_from_args(args) or None,
        )  # fmt: skip
    return _emit(result, args, console)


def regress_artifacts(a, b, *, threshold_pct: float, inputs=None, iters: int, **timing):
    """Interleaved A/B of two artifact files, as a one-row DocumentComparison."""
    from torchship.api import open_artifacts
    from torchship.regression.documents import DocumentComparison, RowComparison
    from torchship.regression.stats import CompareConfig, compare_rounds
    from torchship.runtimes.interleaved import interleaved_ab

    config = CompareConfig(threshold_pct=threshold_pct)
    rounds = timing.get("rounds")
    if rounds is not None and rounds < config.min_rounds:
        # fewer rounds can only ever be inconclusive, so the gate could never fail
        raise ConfigError(f"--rounds {rounds}: a verdict needs at least {config.min_rounds} rounds")
    first, second = open_artifacts([a, b], inputs=inputs)
    ab = interleaved_ab(first, second, iters_per_round=iters, **timing)
    verdict = compare_rounds(ab.a_rounds, ab.b_rounds, config=config)
    runtimes = ab.runtime if ab.runtime_b == ab.runtime else f"{ab.runtime} vs {ab.runtime_b}"
    key = (
        runtimes,
        second.precision.value,
        f"batch {ab.batch}",
        f"{Path(a).name} -> {Path(b).name}",
    )
    return DocumentComparison((RowComparison(key, verdict),), None, None, threshold_pct)


# --- verify -----------------------------------------------------------------------------------


def _register_verify(commands) -> None:
    p = commands.add_parser(
        "verify", help="re-hash a bundle's files and re-run parity against its reference I/O"
    )
    p.add_argument("bundle", metavar="BUNDLE_DIR", help="a folder with manifest.json")
    p.add_argument("--json", metavar="OUT", help="write every check as JSON ('-': stdout)")
    p.set_defaults(handler=_verify)


def _verify(args, *, console: Console, argv) -> int:
    from torchship.cli.commands import progress
    from torchship.cli.main import dump_json
    from torchship.errors import CheckFailedError
    from torchship.verify import verify_bundle

    with progress(console) as step:
        step(f"verifying {args.bundle}")
        report = verify_bundle(args.bundle)
    if args.json:
        dump_json(args.json, report.to_dict(), console)
    if args.json != "-":
        for check in report.checks:
            if check.status != "ok":
                console.print(f"{check.status}: {check.path} ({check.check}) {check.detail}")
    if not report.passed:
        raise CheckFailedError(report.message())
    if args.json != "-":
        console.print(report.message())
    return EXIT_OK


# --- init -------------------------------------------------------------------------------------


def _register_init(commands) -> None:
    p = commands.add_parser("init", help="write a commented example pipeline.toml")
    p.add_argument("path", nargs="?", default="pipeline.toml", help="where (default pipeline.toml)")
    p.add_argument("--force", action="store_true", help="overwrite an existing file")
    p.set_defaults(handler=_init)


def _init(args, *, console: Console, argv) -> int:
    from torchship.files import atomic_write_text
    from torchship.pipeline import EXAMPLE_CONFIG

    path = Path(args.path)
    if path.exists() and not args.force:
        raise ConfigError(f"{path}: exists; pass --force to overwrite it")
    atomic_write_text(path, EXAMPLE_CONFIG)
    console.print(f"wrote {path}; run it with `torchship ship {path}`")
    return EXIT_OK


# --- hooks for torchship/commands.py ------------------------------------------------------------


def save_baseline_from_args(args, document: dict, console: Console) -> None:
    """`bench --save-baseline NAME [--baseline-dir DIR]`: file the document as a baseline."""
    from torchship.regression.baselines import save_baseline

    path = save_baseline(document, args.save_baseline, root=getattr(args, "baseline_dir", None))
    if args.json != "-":
        console.print(f"baseline {args.save_baseline!r} saved to {path}")


def ship_pipeline(path: str, *, console: Console, argv, json_out: str | None) -> int:
    """`torchship ship pipeline.toml`: run it, print the gates, exit 1 on a failed gate."""
    from torchship.cli.commands import progress
    from torchship.cli.main import dump_json
    from torchship.pipeline import load_pipeline, require_pipeline, run_pipeline

    config = load_pipeline(path)
    with progress(console) as step:
        result = run_pipeline(config, command=argv, progress=step)
    if json_out != "-":  # stdout holds only the JSON then
        for gate in result.gates:
            console.print(f"{'pass' if gate.passed else 'FAIL'}  {gate.name}: {gate.detail}")
        console.print(f"bundle: {result.bundle}/ ({'passed' if result.passed else 'FAILED'})")
    if json_out:
        dump_json(json_out, result.to_dict(), console)
    require_pipeline(result)
    return EXIT_OK
