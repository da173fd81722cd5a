"""Flag groups that several commands share, what they parse into, and the output helpers.

Each `add_*` function adds its flags in a fixed order (it shows in `--help`); the matching
`*_from_args` turns the parsed namespace into the library's typed options.
"""

from __future__ import annotations

import argparse
import contextlib
import json
from collections.abc import Callable, Iterator

from rich.console import Console

from torchship.errors import ConfigError
from torchship.files import atomic_write_json, atomic_write_text
from torchship.runtimes import BenchConfig
from torchship.specs import InputSpec, apply_dynamic_flags, parse_input_flag

__all__ = [
    "add_input_flags",
    "specs_from_args",
    "add_weights_flags",
    "add_bench_flags",
    "bench_config_from_args",
    "runtimes_from_args",
    "add_verdict_flags",
    "add_baseline_flags",
    "dump_json",
    "write_text",
    "progress",
]


# --- model inputs -----------------------------------------------------------------------------


def add_input_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("model inputs")
    group.add_argument(
        "--input",
        action="append",
        default=[],
        metavar="NAME:SHAPE[:DTYPE]",
        help="an input, trtexec-style, e.g. image:1x3x224x224 or "
        "input_ids:1x32:int64:0..30522 (repeatable)",
    )
    group.add_argument(
        "--dynamic-batch",
        action="store_true",
        help="make axis 0 of every input a dynamic dim named 'batch'",
    )
    group.add_argument(
        "--dynamic",
        action="append",
        default=[],
        metavar="NAME:AXIS=DIM",
        help="name another dynamic axis, e.g. input_ids:1=seq (repeatable)",
    )


def specs_from_args(args: argparse.Namespace) -> list[InputSpec]:
    """The --input specs with --dynamic-batch/--dynamic applied; [] when none are given."""
    specs = [parse_input_flag(text) for text in args.input]
    if not specs and (args.dynamic_batch or args.dynamic):
        raise ConfigError("--dynamic-batch/--dynamic need the inputs given with --input")
    return apply_dynamic_flags(specs, dynamic_batch=args.dynamic_batch, dynamic=args.dynamic)


def add_weights_flags(parser: argparse.ArgumentParser) -> None:
    """--weights, --trust-pickle and the hf: flags, for commands that load a model source."""
    parser.add_argument("--weights", help="state_dict file (torch.save) or .safetensors")
    parser.add_argument(
        "--trust-pickle",
        action="store_true",
        help="allow loading fully pickled models/weights (runs code from the file)",
    )
    parser.add_argument(
        "--task",
        help="hf: sources: feature-extraction (mean-pooled), last-hidden-state, "
        "sequence-classification, image-classification, fill-mask, audio-classification",
    )
    parser.add_argument(
        "--config", metavar="JSON", help="hf:ConfigClass: config fields, inline JSON or a file"
    )


# --- bench timing -----------------------------------------------------------------------------


def add_bench_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--runtime", help="comma-separated runtimes (default: the format's own)")
    parser.add_argument(
        "--batch",
        default=None,
        help="comma-separated batch sizes, e.g. 1,8 (default 1, or the model's fixed batch)",
    )
    parser.add_argument("--threads", type=int, default=None, help="intra-op threads")
    parser.add_argument("--warmup", type=int, default=10, help="untimed iterations first")
    parser.add_argument("--iters", type=int, default=None, help="timed iterations (fixed count)")
    parser.add_argument(
        "--min-time",
        type=float,
        default=1.0,
        metavar="S",
        help="time at least S seconds when --iters is not given (default 1.0)",
    )


def bench_config_from_args(args: argparse.Namespace) -> BenchConfig:
    return BenchConfig(
        batches=_int_list("--batch", args.batch or "1"),
        threads=args.threads,
        warmup=args.warmup,
        iters=args.iters,
        min_time_s=None if args.iters else args.min_time,
    )


def runtimes_from_args(args: argparse.Namespace) -> list[str] | None:
    """The --runtime names; None (each format's own runtime) when not given."""
    return [r.strip() for r in args.runtime.split(",")] if args.runtime else None


def _int_list(flag: str, text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(","))
    except ValueError:
        raise ConfigError(f"{flag} {text!r}: expected comma-separated integers, e.g. 1,8") from None
    if any(v < 1 for v in values):
        raise ConfigError(f"{flag} {text!r}: values must be >= 1")
    return values


# --- verdicts and baselines -------------------------------------------------------------------


def add_verdict_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--threshold", type=float, default=5.0, metavar="PCT",
        help="relative slowdown that counts as a regression, in percent (default 5)",
    )  # fmt: skip
    parser.add_argument("--json", metavar="OUT", help="write the verdicts as JSON ('-': stdout)")
    parser.add_argument("--markdown", metavar="OUT", help="write a Markdown table ('-': stdout)")
    parser.add_argument("--junit", metavar="OUT", help="write JUnit XML for CI ('-': stdout)")


def add_baseline_flags(parser: argparse.ArgumentParser, *, save: bool = False) -> None:
    """--baseline-dir; with `save`, --save-baseline NAME before it."""
    if save:
        parser.add_argument(
            "--save-baseline", metavar="NAME", help="also file the results as baseline NAME"
        )
    parser.add_argument("--baseline-dir", help="baselines folder (default $TORCHSHIP_BASELINES)")


# --- output -----------------------------------------------------------------------------------


def dump_json(path: str, data: object, console: Console) -> None:
    """`data` as JSON to the file `path`, written atomically, or to stdout when `path` is '-'."""
    if path == "-":
        console.print_json(json.dumps(data))
    else:
        atomic_write_json(path, data)


def write_text(path: str, text: str, console: Console) -> None:
    """`text` to the file `path`, written atomically, or to stdout when `path` is '-'."""
    if path == "-":
        console.out(text, end="", highlight=False)
    else:
        atomic_write_text(path, text)


@contextlib.contextmanager
def progress(console: Console) -> Iterator[Callable[[str], None]]:
    """A spinner with the current step on a terminal; silent in pipes and CI."""
    if not console.is_terminal:
        yield lambda message: None
        return
    with console.status("starting") as status:
        yield lambda message: status.update(message)
