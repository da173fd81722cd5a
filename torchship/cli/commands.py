"""The subcommands: each registers its flags and a handler(args, *, console, argv) -> exit code."""

from __future__ import annotations

import argparse
import contextlib
from collections.abc import Callable, Iterator

from rich.console import Console

from torchship.errors import CheckFailedError, ConfigError

__all__ = ["REGISTER"]


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


def specs_from_args(args: argparse.Namespace):
    from torchship.specs import apply_dynamic_flags, parse_input_flag

    specs = [parse_input_flag(text) for text in args.input]
    if not specs and (args.dynamic_batch or args.dynamic):
        raise ConfigError("--dynamic-batch/--dynamic need the inputs given with --input")
    return apply_dynamic_flags(specs, dynamic_batch=args.dynamic_batch, dynamic=args.dynamic)


@contextlib.contextmanager
def progress(console: Console) -> Iterator[Callable[[str], None]]:
    """A spinner with the current step on a terminal; silent in pipes and CI."""
    if not console.is_terminal:
        yield lambda message: None
        return
    with console.status("starting") as status:
        yield lambda message: status.update(message)


# --- ship -------------------------------------------------------------------------------------


def _register_ship(commands) -> None:
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
    p.set_defaults(handler=_ship)


def _ship(args, *, console: Console, argv) -> int:
    from torchship.cli.main import dump_json
    from torchship.cli.tables import ship_table
    from torchship.pipeline.demo import ship_demo
    from torchship.runtimes import BenchConfig

    if args.config is not None:
        from torchship.cli.regress import ship_pipeline

        return ship_pipeline(args.config, console=console, argv=argv, json_out=args.json)
    config = BenchConfig(batches=(8,), min_time_s=args.min_time, threads=args.threads)
    with progress(console) as step:
        report = ship_demo(
            args.output, bench_config=config, int8=not args.no_int8, prune=not args.no_prune,
            command=argv, progress=step,
        )  # fmt: skip
    if args.json != "-":  # with --json -, stdout carries the JSON only
        console.print(ship_table(report.rows, batch=report.batch))
        console.print(f"bundle: {report.out_dir}/ (manifest.json, bench.json, report.json)")
    if args.json:
        dump_json(args.json, report.to_dict(), console)
    if not report.passed:
        raise CheckFailedError("an INT8 artifact missed its accuracy budget (marked in the bundle)")
    return 0


# --- export -----------------------------------------------------------------------------------


def _register_export(commands) -> None:
    p = commands.add_parser("export", help="export a model and check every artifact's parity")
    p.add_argument(
        "model", help="demo | pkg.module:factory | file.py:factory | model.pt2 | model.ts"
    )
    add_input_flags(p)
    p.add_argument("--weights", help="state_dict file (torch.save) or .safetensors")
    p.add_argument(
        "--trust-pickle",
        action="store_true",
        help="allow loading fully pickled models/weights (runs code from the file)",
    )
    p.add_argument(
        "--format",
        default="torchscript,onnx,exported-program",
        help="comma-separated: torchscript, onnx, exported-program (default), aoti, executorch",
    )
    p.add_argument("--opset", type=int, default=None, help="ONNX opset (default 18)")
    p.add_argument("--script", action="store_true", help="TorchScript by scripting, not tracing")
    p.add_argument(
        "--legacy-onnx",
        action="store_true",
        help="use the legacy (TorchScript-based) ONNX exporter directly",
    )
    p.add_argument("-o", "--output", default="exported", help="output directory")
    p.set_defaults(handler=_export)


def _export(args, *, console: Console, argv) -> int:
    from torchship.api import export
    from torchship.cli.tables import human_size
    from torchship.exporter import ExportOptions

    formats = [f.strip() for f in args.format.split(",") if f.strip()]
    options = ExportOptions(
        opset=args.opset, script=args.script, dynamo=False if args.legacy_onnx else None
    )
    with progress(console) as step:
        step(f"exporting {args.model}")
        result = export(
            args.model,
            args.output,
            formats=formats,
            inputs=specs_from_args(args),
            weights=args.weights,
            trust_pickle=args.trust_pickle,
            options=options,
            command=argv,
        )
    for artifact in result.artifacts:
        report = result.parity[artifact.path.name]
        console.print(
            f"{artifact.path}  {artifact.format.value}  "
            f"{human_size(artifact.size_bytes)}  parity: pass ({len(report.cases)} comparisons)"
        )
    console.print(f"manifest: {result.manifest_path}")
    return 0


# --- bench ------------------------------------------------------------------------------------


def _register_bench(commands) -> None:
    p = commands.add_parser("bench", help="benchmark artifacts on runtimes")
    p.add_argument("artifacts", nargs="+", metavar="ARTIFACT", help=".onnx, .ts/.pt or .pt2")
    p.add_argument("--runtime", help="comma-separated runtimes (default: the format's own)")
    p.add_argument("--batch", default="1", help="comma-separated batch sizes, e.g. 1,8")
    p.add_argument("--threads", type=int, default=None, help="intra-op threads")
    p.add_argument("--warmup", type=int, default=10, help="untimed iterations first")
    p.add_argument("--iters", type=int, default=None, help="timed iterations (fixed count)")
    p.add_argument(
        "--min-time",
        type=float,
        default=1.0,
        metavar="S",
        help="time at least S seconds when --iters is not given (default 1.0)",
    )
    p.add_argument("--json", metavar="OUT", help="write the torchship.bench/1 JSON ('-': stdout)")
    p.add_argument("--save-baseline", metavar="NAME", help="also file the results as baseline NAME")
    p.add_argument("--baseline-dir", help="baselines folder (default $TORCHSHIP_BASELINES)")
    add_input_flags(p)
    p.set_defaults(handler=_bench)


def _bench(args, *, console: Console, argv) -> int:
    from torchship.api import bench
    from torchship.cli.main import dump_json
    from torchship.cli.tables import bench_table
    from torchship.runtimes import BenchConfig

    config = BenchConfig(
        batches=_int_list("--batch", args.batch),
        threads=args.threads,
        warmup=args.warmup,
        iters=args.iters,
        min_time_s=None if args.iters else args.min_time,
    )
    runtimes = [r.strip() for r in args.runtime.split(",")] if args.runtime else None
    with progress(console) as step:
        document = bench(
            args.artifacts,
            runtimes=runtimes,
            config=config,
            inputs=specs_from_args(args) or None,
            progress=step,
        )
    if args.json != "-":  # high-CV warnings are logged by the bench layer itself
        console.print(bench_table(document))
    if args.json:
        dump_json(args.json, document, console)
    if args.save_baseline:
        from torchship.cli.regress import save_baseline_from_args

        save_baseline_from_args(args, document, console)
    return 0


def _int_list(flag: str, text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(","))
    except ValueError:
        raise ConfigError(f"{flag} {text!r}: expected comma-separated integers, e.g. 1,8") from None
    if any(v < 1 for v in values):
        raise ConfigError(f"{flag} {text!r}: values must be >= 1")
    return values


# --- doctor -----------------------------------------------------------------------------------


def _register_doctor(commands) -> None:
    p = commands.add_parser("doctor", help="what this machine can run: runtimes, CPU ISA, GPU")
    p.add_argument("--json", metavar="OUT", help="write the facts as JSON ('-': stdout)")
    p.set_defaults(handler=_doctor)


def _doctor(args, *, console: Console, argv) -> int:
    from torchship.cli.main import dump_json
    from torchship.cli.tables import doctor_table
    from torchship.doctor import doctor_facts, doctor_rows

    facts = doctor_facts()
    if args.json:
        dump_json(args.json, facts, console)
    if args.json != "-":
        console.print(doctor_table(doctor_rows(facts)))
    return 0


REGISTER = [_register_ship, _register_export, _register_bench, _register_doctor]

#: Commands that live in their own module, each exposing `register(commands)`. One per line.
COMMAND_MODULES = (
    "torchship.cli.regress",
    "torchship.cli.prune",
    "torchship.cli.quantize",
    "torchship.cli.engine",
    "torchship.cli.tune",
)
