"""`torchship build-engine MODEL.onnx`: a TensorRT engine + manifest entry, parity-checked."""

from __future__ import annotations

import argparse
import re
from collections.abc import Sequence
from pathlib import Path

from rich.console import Console

from torchship.artifact import Precision
from torchship.cli.flags import add_input_flags, dump_json, progress, specs_from_args
from torchship.cli.tables import human_size
from torchship.errors import EXIT_OK, ConfigError
from torchship.exporter.engines import build_engine_file
from torchship.runtimes.tensorrt.builder import EngineOptions, ShapeRange

__all__ = ["register_build_engine", "parse_shape_flags", "options_from_args"]

_SHAPE = re.compile(r"^([A-Za-z_][A-Za-z0-9_.]*):(\d+(?:x\d+)*)$")


def register_build_engine(commands) -> None:
    p = commands.add_parser(
        "build-engine", help="build a TensorRT engine from ONNX (fp32/fp16/int8), parity-checked"
    )
    p.add_argument("model", metavar="MODEL.onnx", help="the ONNX model (Q/DQ ONNX for int8)")
    p.add_argument("--precision", default="fp32", help="fp32 | fp16 | int8 (default fp32)")
    p.add_argument(
        "--calibrator",
        default=None,
        help="int8 through TensorRT's own calibration: entropy | minmax (TensorRT < 11; the "
        "default int8 path is the Q/DQ ONNX from `torchship quantize --target tensorrt`)",
    )
    p.add_argument("--calib", metavar="DATA", help="calibration data for --calibrator")
    p.add_argument("--calib-samples", type=int, default=None, help="calibration samples")
    p.add_argument("--calib-batch", type=int, default=None, help="calibration batch (default 8)")
    p.add_argument("--workspace", type=int, default=None, metavar="MB", help="workspace limit")
    for which in ("min", "opt", "max"):
        p.add_argument(
            f"--{which}",
            action="append",
            default=[],
            metavar="NAME:SHAPE",
            help=f"{which} shape of a dynamic input, e.g. image:1x3x32x32 (repeatable or "
            "comma-separated; default: from the model's input specs)",
        )
    p.add_argument("--timing-cache", metavar="FILE", help="timing cache file (default: cache dir)")
    p.add_argument("--no-cache", action="store_true", help="rebuild even if the cache has it")
    p.add_argument(
        "--hardware-compat", action="store_true", help="build for every GPU from Ampere on"
    )
    p.add_argument("--no-parity", action="store_true", help="skip the parity check vs ONNX")
    p.add_argument("--json", metavar="OUT", help="write the build record as JSON ('-': stdout)")
    p.add_argument(
        "-o", "--output", default=None, help="output .engine file or directory (default: "
        "beside the ONNX, MODEL.PRECISION.engine)",
    )  # fmt: skip
    add_input_flags(p)
    p.set_defaults(handler=_build_engine)


def parse_shape_flags(flag: str, values: list[str]) -> dict[str, tuple[int, ...]]:
    """`--min x:1x3x32x32,y:1x8` (repeatable) -> {"x": (1, 3, 32, 32), "y": (1, 8)}."""
    shapes: dict[str, tuple[int, ...]] = {}
    for item in (v.strip() for value in values for v in value.split(",")):
        if not item:
            continue
        m = _SHAPE.match(item)
        if not m:
            raise ConfigError(f"--{flag} {item!r}: expected NAME:SHAPE, e.g. image:1x3x224x224")
        if m.group(1) in shapes:
            raise ConfigError(f"--{flag}: input {m.group(1)!r} is given twice")
        shapes[m.group(1)] = tuple(int(d) for d in m.group(2).split("x"))
    return shapes


def profiles_from_args(args: argparse.Namespace) -> tuple[ShapeRange, ...] | None:
    """ShapeRanges from --min/--opt/--max; an input needs all three (or none)."""
    given = {w: parse_shape_flags(w, getattr(args, w)) for w in ("min", "opt", "max")}
    names = set().union(*given.values())
    ranges = []
    for name in sorted(names):
        missing = [w for w in ("min", "opt", "max") if name not in given[w]]
        if missing:
            flags = ", ".join(f"--{w}" for w in missing)
            raise ConfigError(f"input {name!r}: profile shapes need {flags} as well")
        ranges.append(ShapeRange(name, given["min"][name], given["opt"][name], given["max"][name]))
    return tuple(ranges) or None


def options_from_args(args: argparse.Namespace) -> EngineOptions:
    valid = [p.value for p in Precision]
    if args.precision not in valid:
        raise ConfigError(f"--precision {args.precision!r}: valid: {', '.join(valid)}")
    return EngineOptions(
        precision=Precision(args.precision),
        workspace_mb=args.workspace,
        profiles=profiles_from_args(args),
        calibrator=args.calibrator,
        calib_data=args.calib,
        calib_samples=args.calib_samples,
        calib_batch=args.calib_batch,
        timing_cache=Path(args.timing_cache) if args.timing_cache else None,
        hardware_compat=args.hardware_compat,
        use_cache=not args.no_cache,
    )


def _build_engine(args: argparse.Namespace, *, console: Console, argv: Sequence[str]) -> int:
    options = options_from_args(args)
    with progress(console) as step:
        step(f"building a {options.precision.value} TensorRT engine from {args.model}")
        result = build_engine_file(
            args.model,
            out=args.output,
            options=options,
            inputs=specs_from_args(args) or None,
            parity=not args.no_parity,
            command=argv,
        )
    info = result.info
    record = {
        "engine": str(result.artifact.path),
        "from_cache": result.from_cache,
        "manifest": str(result.manifest_path),
        "tensorrt": info.to_dict(),
        "parity": result.parity,
    }
    if args.json:
        dump_json(args.json, record, console)
    if args.json != "-":
        source = "from the engine cache" if result.from_cache else "built"
        parity = "skipped" if result.parity is None else "pass"
        console.print(
            f"{result.artifact.path}  {info.mode}  {human_size(result.artifact.size_bytes)}  "
            f"TensorRT {info.tensorrt_version} on {info.gpu_name} (sm {info.compute_capability}) "
            f"({source})  parity: {parity}",
            markup=False,
            soft_wrap=True,
        )
        console.print(f"manifest: {result.manifest_path}", markup=False, soft_wrap=True)
    return EXIT_OK
