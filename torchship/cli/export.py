"""`torchship export MODEL`: every format, each parity-checked against eager PyTorch."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from rich.console import Console

from torchship.api import export
from torchship.cli.flags import add_input_flags, add_weights_flags, progress, specs_from_args
from torchship.cli.tables import human_size
from torchship.errors import EXIT_OK
from torchship.exporter import ExportOptions

__all__ = ["register_export"]


def register_export(commands) -> None:
    p = commands.add_parser("export", help="export a model and check every artifact's parity")
    p.add_argument(
        "model",
        help="demo | pkg.module:factory | file.py:factory | model.pt2 | model.ts | hf:DIR | "
        "hf:ConfigClass | timm:NAME",
    )
    add_input_flags(p)
    add_weights_flags(p)
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


def _export(args: argparse.Namespace, *, console: Console, argv: Sequence[str]) -> int:
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
            task=args.task,
            config=args.config,
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
    return EXIT_OK
