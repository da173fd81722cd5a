"""Command line: a thin layer over torchship's Python API. Owns the terminal and exit codes."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from rich.console import Console
from rich.logging import RichHandler
from rich.markup import escape

from torchship.cli import bench, debug, engine, export, prune, quantize, regress, ship, tune, verify
from torchship.errors import EXIT_CHECK_FAILED, EXIT_OK, ToolchainError
from torchship.interrupts import exit_code_of, handle_signals, interrupted_line

__all__ = ["main", "build_parser"]

log = logging.getLogger("torchship")

#: Every subcommand's `register(commands)`, in the order `torchship --help` lists them. Each
#: adds its subparser with a `handler(args, *, console, argv) -> exit code` default.
_COMMANDS = (
    ship.register_ship,
    export.register_export,
    bench.register_bench,
    bench.register_doctor,
    regress.register_compare,
    regress.register_regress,
    verify.register_verify,
    ship.register_init,
    prune.register_prune,
    quantize.register_quantize,
    engine.register_build_engine,
    tune.register_tune,
    debug.register_debug,
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="torchship",
        description="Export, verify, quantize and benchmark PyTorch models for deployment.",
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks and debug logs")
    parser.add_argument("-v", "--verbose", action="store_true", help="show info logs")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for register in _COMMANDS:
        register(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    _configure_logging(debug=args.debug, verbose=args.verbose)
    # markup off: printed paths, names and messages may hold [brackets] (torchship[gpu]);
    # styled text is built with rich.text.Text instead
    console = Console(stderr=False, highlight=False, markup=False)
    if not console.is_terminal:  # pipes: no wrapped tables (ship's table with the search is ~180)
        console = Console(stderr=False, highlight=False, markup=False, width=200)
    errors = Console(stderr=True, highlight=False)
    try:
        with handle_signals():  # SIGTERM/SIGHUP like Ctrl-C; wrapped interrupts unwrapped
            return int(args.handler(args, console=console, argv=["torchship", *argv]) or EXIT_OK)
    except ToolchainError as exc:
        if args.debug:
            errors.print_exception()
        # escape: messages name TOML tables like [model], which rich would read as markup
        errors.print(f"[bold red]error:[/] {escape(str(exc))}", markup=True, soft_wrap=True)
        return exc.exit_code
    except KeyboardInterrupt as exc:
        errors.print(interrupted_line(exc))
        return exit_code_of(exc)
    except Exception as exc:  # a bug in torchship or a library: one line unless --debug
        if args.debug:
            errors.print_exception()
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        errors.print(
            f"[bold red]internal error:[/] {type(exc).__name__}: {first} "
            "(rerun with --debug for the traceback)",
            markup=True,
            soft_wrap=True,
        )
        return EXIT_CHECK_FAILED


def _configure_logging(*, debug: bool, verbose: bool) -> None:
    level = logging.DEBUG if debug else logging.INFO if verbose else logging.WARNING
    handler = RichHandler(console=Console(stderr=True), show_time=False, show_path=debug)
    logging.basicConfig(level=level, handlers=[handler], format="%(message)s", force=True)
    if not debug:
        # Third-party libraries are chatty at INFO; keep them at WARNING unless debugging.
        for name in ("torch", "onnxscript", "onnx_ir", "onnxruntime"):
            logging.getLogger(name).setLevel(logging.WARNING)
        # The dynamo ONNX exporter warns about every missing torchvision op on each export.
        logging.getLogger("torch.onnx._internal.exporter._registration").setLevel(logging.ERROR)
        # torchao warns on every CPU import that its CUDA-only kernels did not load.
        logging.getLogger("torchao").setLevel(logging.ERROR)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
