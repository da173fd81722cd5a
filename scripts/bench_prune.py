"""Benchmark: structured pruning (+ distillation, + INT8) vs the unpruned FP32 model, batch 8.

For the demo and a ResNet-18-style CNN at 64x64: ratios 0.3/0.5/0.7 (L2 magnitude, channels
rounded to 8) -> params, MACs, p50 latency ratio vs unpruned on ort-cpu and torch, the same
model in static INT8 (`auto` preset) on ort-cpu vs the unpruned FP32 model, and (demo, which
has labels) top-1 after distillation from the unpruned teacher, and of its INT8 version.
ResNet-18-style weights are random: its rows measure speed only. Timings are comparable only
inside one run: read the ratios, not the absolute numbers.

    python scripts/bench_prune.py [--min-time 1] [--epochs 3] [--threads 2] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import tempfile
from dataclasses import replace
from pathlib import Path

import numpy as np

from torchship.calibration import QuantizeOptions, quantize
from torchship.exporter import ExportOptions, export_model
from torchship.exporter.prune_distill import DistillConfig, evaluate_accuracy, recover
from torchship.exporter.prune_search import measure_latency
from torchship.exporter.pruning import PruneConfig, count_cost, prune_channels
from torchship.fingerprint import machine_fingerprint
from torchship.loaded import to_torch_inputs
from torchship.models import demo_dataset, load_demo
from torchship.runtimes import BenchConfig, bench_runner
from torchship.sources import load_model

RATIOS = (0.3, 0.5, 0.7)
RUNTIMES = ("ort-cpu", "torch")
BATCH = 8


def _models():
    yield "demo", load_demo()
    model = load_model("torchship.models.zoo:resnet18_style")
    yield "resnet18_style@64", model


def _data(split: str) -> dict:
    images, labels = demo_dataset(split)
    return {"image": images, "labels": labels}


def _calib(label: str) -> dict:
    if label == "demo":
        return {"image": demo_dataset("train")[0][:256]}
    rng = np.random.default_rng(0)
    return {"image": rng.uniform(-1, 1, (128, 3, 64, 64)).astype(np.float32)}


def _int8(label, model, fp32_ms: float, test, *, args) -> dict:
    """The model in static INT8 on ort-cpu: speedup vs the unpruned FP32 ONNX, top-1."""
    config = BenchConfig(batches=(BATCH,), warmup=5, min_time_s=args.min_time, threads=args.threads)
    options = QuantizeOptions(bench=False, threads=args.threads, max_drop=100.0)
    with tempfile.TemporaryDirectory(prefix="bench-prune-") as tmp:
        onnx = export_model(model, Path(tmp), formats=["onnx"],
                            options=ExportOptions(dynamo=False))[0]  # fmt: skip
        result = quantize(onnx, Path(tmp) / "int8", calib=_calib(label), eval_data=test,
                          options=options)  # fmt: skip
        p50 = bench_runner("ort-cpu", result.artifact, config=config, batch=BATCH)
        p50 = float(p50.latency_ms["p50"])
    top1 = result.report["accuracy"].get("top1") if test else None
    return {"int8_ms": p50, "int8_speedup": fp32_ms / p50, "int8_top1": top1}


def _row(label, ratio, model, base, *, args, train, test, teacher) -> dict:
    cost = count_cost(model.module, to_torch_inputs(model.inputs, model.example))
    row = {"model": label, "ratio": ratio, "macs": cost[0], "params": cost[1]}
    for runtime in RUNTIMES:
        p50 = measure_latency(model, runtime=runtime, batch=BATCH, min_time_s=args.min_time,
                              threads=args.threads)  # fmt: skip
        row[f"{runtime}_ms"] = p50
        row[f"{runtime}_speedup"] = base[runtime] / p50 if base else 1.0
    row["top1"] = evaluate_accuracy(model, test) if test else None
    if train is not None and ratio:
        config = DistillConfig(epochs=args.epochs, seed=args.seed)
        model, _ = recover(model, train, teacher=teacher, config=config)
        row["top1_no_finetune"], row["top1"] = row["top1"], evaluate_accuracy(model, test)
    fp32_ms = base["ort-cpu"] if base else row["ort-cpu_ms"]
    row.update(_int8(label, model, fp32_ms, test, args=args))
    return row


def run(args) -> list[dict]:
    rows = []
    for label, model in _models():
        train, test = (_data("train"), _data("test")) if label == "demo" else (None, None)
        base = _row(label, 0.0, model, None, args=args, train=None, test=test, teacher=model)
        base_ms = {r: base[f"{r}_ms"] for r in RUNTIMES}
        rows.append(base)
        for ratio in RATIOS:
            pruned = prune_channels(model, config=PruneConfig(ratio=ratio)).model
            pruned = replace(pruned, source=f"{label}@{ratio}")
            rows.append(_row(label, ratio, pruned, base_ms, args=args, train=train, test=test,
                             teacher=model))  # fmt: skip
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--min-time", type=float, default=1.0)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--json", help="write rows + machine as JSON")
    args = parser.parse_args()
    rows = run(args)
    machine = machine_fingerprint()
    print(f"cpu: {machine.get('cpu_model')}  isa: {machine.get('isa')}  batch {BATCH}")
    print("speedups vs the unpruned FP32 model on the same runtime (int8: vs FP32 on ort-cpu)")
    print("model               ratio  params     MACs        ort-cpu x  torch x  int8 x  "
          "top1 (no ft)     int8 top1")  # fmt: skip
    for r in rows:
        top1 = "-" if r["top1"] is None else f"{r['top1']:.2%}"
        if r.get("top1_no_finetune") is not None:
            top1 += f" ({r['top1_no_finetune']:.2%})"
        int8_top1 = "-" if r["int8_top1"] is None else f"{r['int8_top1']:.2%}"
        print(f"{r['model']:<19} {r['ratio']:<5}  {r['params']:<9}  {r['macs']:<10}  "
              f"{r['ort-cpu_speedup']:>8.2f}  {r['torch_speedup']:>7.2f}  "
              f"{r['int8_speedup']:>6.2f}  {top1:<16} {int8_top1}")  # fmt: skip
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump({"machine": machine, "rows": rows}, f, indent=2)


if __name__ == "__main__":
    main()
