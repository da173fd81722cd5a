"""`torchship prune`: structured channel pruning folded before export, with recovery."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from rich.console import Console

from torchship.cli.flags import add_input_flags, add_weights_flags, progress, specs_from_args
from torchship.data import load_arrays
from torchship.errors import EXIT_OK, ConfigError
from torchship.exporter.pruning.channels import PruneConfig
from torchship.exporter.pruning.distill import DistillConfig, RecoveryMode, evaluate_accuracy
from torchship.exporter.pruning.run import prune
from torchship.exporter.pruning.save import save_pruned
from torchship.exporter.pruning.unstructured import prune_unstructured
from torchship.sources import load_model

__all__ = ["register_prune"]


def register_prune(commands) -> None:
    p = commands.add_parser("prune", help="remove channels (folded before export) and recover")
    p.add_argument("model", help="demo | pkg.module:factory | file.py:factory | hf:DIR | timm:NAME")
    add_input_flags(p)
    add_weights_flags(p)
    amount = p.add_mutually_exclusive_group()
    amount.add_argument("--ratio", type=float, help="fraction of channels to remove per layer")
    amount.add_argument("--target-speedup", type=float, metavar="X", help="search the ratio")
    amount.add_argument("--target-latency-ms", type=float, metavar="Y", help="search the ratio")
    p.add_argument("--runtime", default="ort-cpu", help="runtime timed by the search")
    p.add_argument("--batch", type=int, default=8, help="batch timed by the search (default 8)")
    p.add_argument("--importance", default="l2", help="l1 | l2 | taylor (needs --train)")
    p.add_argument("--global", dest="global_pruning", action="store_true", help="global ranking")
    p.add_argument("--round-to", type=int, default=8, help="keep channel counts multiples of N")
    p.add_argument("--ignore", default="", help="comma-separated layer names to protect")
    p.add_argument("--unstructured", action="store_true", help="weight sparsity (no speedup)")
    p.add_argument("--train", help="training data with labels (.npz, a folder, module:function)")
    p.add_argument("--eval", help="eval data with labels (accuracy before/after)")
    recovery = p.add_mutually_exclusive_group()
    recovery.add_argument("--distill", action="store_true", help="distill from the unpruned model")
    recovery.add_argument("--finetune", action="store_true", help="plain fine-tuning on labels")
    p.add_argument("--epochs", type=int, default=3, help="recovery epochs (default 3)")
    p.add_argument("--lr", type=float, default=2e-3, help="learning rate (default 2e-3)")
    p.add_argument("--temperature", type=float, default=4.0, help="distillation temperature")
    p.add_argument("--kd-weight", type=float, default=0.7, help="weight of the KL term")
    p.add_argument("--ce-weight", type=float, default=0.3, help="weight of the label term")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("-o", "--output", default="pruned", help="output directory")
    p.set_defaults(handler=_prune)


def _prune(args: argparse.Namespace, *, console: Console, argv: Sequence[str]) -> int:
    if args.batch < 1:
        raise ConfigError(f"--batch {args.batch}: must be >= 1")
    model = load_model(
        args.model,
        inputs=specs_from_args(args) or None,
        weights=args.weights,
        trust_pickle=args.trust_pickle,
        task=args.task,
        config=args.config,
    )
    train = load_arrays(args.train, inputs=model.inputs, what="--train") if args.train else None
    evaluation = load_arrays(args.eval, inputs=model.inputs, what="--eval") if args.eval else None
    ignore = tuple(n.strip() for n in args.ignore.split(",") if n.strip())
    if args.unstructured:
        return _unstructured(args, model, ignore, evaluation, console=console, argv=argv)
    return _structured(args, model, ignore, train, evaluation, console=console, argv=argv)


def _structured(args, model, ignore, train, evaluation, *, console, argv) -> int:
    config = PruneConfig(
        ratio=args.ratio,
        importance=args.importance,
        global_pruning=args.global_pruning,
        round_to=args.round_to,
        ignore=ignore,
    )
    recovery = None
    if args.distill or args.finetune:
        mode = RecoveryMode.FINETUNE if args.finetune else RecoveryMode.DISTILL
        recovery = DistillConfig(
            mode=mode, epochs=args.epochs, lr=args.lr, temperature=args.temperature,
            kd_weight=args.kd_weight, ce_weight=args.ce_weight, seed=args.seed,
        )  # fmt: skip
    with progress(console) as step:
        outcome = prune(
            model, config=config, train=train, eval=evaluation, recovery=recovery,
            target_speedup=args.target_speedup, target_latency_ms=args.target_latency_ms,
            runtime=args.runtime, batch=args.batch, progress=step,
        )  # fmt: skip
        step(f"exporting to {args.output}")
        saved = save_pruned(outcome.model, args.output, pruning=outcome.to_dict(), command=argv)
    _print_summary(console, outcome)
    for artifact in saved.artifacts:
        console.print(f"{artifact.path}  {artifact.format.value}  parity: pass")
    console.print(f"manifest: {saved.manifest_path}")
    return EXIT_OK


def _print_summary(console: Console, outcome) -> None:
    result = outcome.pruning
    if outcome.search is not None:
        console.print(f"search on {outcome.search.runtime} (batch {outcome.search.batch}), "
                      f"unpruned p50 {outcome.search.baseline_ms:.3f} ms")  # fmt: skip
        for row in outcome.search.rows:
            acc = "-" if row.accuracy is None else f"{row.accuracy:.2%}"
            console.print(
                f"  ratio {row.ratio:.3f}  params {row.params}  MACs {row.macs}  "
                f"p50 {row.latency_ms:.3f} ms  {row.speedup:.2f}x  acc {acc}"
            )
        console.print(f"chosen ratio: {outcome.search.chosen_ratio:.3f}")
    console.print(f"params {result.params[0]} -> {result.params[1]}, "
                  f"MACs {result.macs[0]} -> {result.macs[1]}")  # fmt: skip
    for name, (before, after) in result.changed_layers.items():
        console.print(f"  {name}: {before} -> {after} channels")
    for key, value in outcome.accuracy.items():
        if value is not None:
            console.print(f"accuracy {key}: {value:.2%}")


def _unstructured(args, model, ignore, evaluation, *, console, argv) -> int:
    if args.target_speedup is not None or args.target_latency_ms is not None:
        raise ConfigError("--unstructured gives no speedup on dense runtimes; use --ratio")
    sparse, report = prune_unstructured(model, sparsity=args.ratio or 0.5, ignore=ignore)
    metrics = {"accuracy": evaluate_accuracy(sparse, evaluation)} if evaluation else {}
    saved = save_pruned(
        sparse, args.output, pruning=report.to_dict(), metrics=metrics, command=argv
    )
    console.print(f"global sparsity {report.global_sparsity:.2%}; note: {report.note}")
    console.print(f"manifest: {saved.manifest_path}")
    return EXIT_OK
