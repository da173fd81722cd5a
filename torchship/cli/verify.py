"""`torchship verify BUNDLE_DIR`: re-hash a bundle's files and re-run parity."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from rich.console import Console

from torchship.cli.flags import dump_json, progress
from torchship.errors import EXIT_OK, CheckFailedError
from torchship.verify import verify_bundle

__all__ = ["register_verify"]


def register_verify(commands) -> None:
    p = commands.add_parser(
        "verify", help="re-hash a bundle's files and re-run parity against its reference I/O"
    )
    p.add_argument("bundle", metavar="BUNDLE_DIR", help="a folder with manifest.json")
    p.add_argument("--json", metavar="OUT", help="write every check as JSON ('-': stdout)")
    p.set_defaults(handler=_verify)


def _verify(args: argparse.Namespace, *, console: Console, argv: Sequence[str]) -> int:
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
