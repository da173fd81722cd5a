"""Benchmark: structured pruning (+ distillation, + INT8) vs the unpruned FP32 model, batch 8.

Two labelled models: the demo, and a ResNet-18-style CNN at 64x64 trained here (8 epochs, seed
0, about a minute on 2 cores) on the demo's digits upsampled to 3x64x64 (an easy task: read its
accuracy drops as "the pruned net still learns what the unpruned one did", not as ImageNet).
Ratios 0.3/0.5/0.7 (L2 magnitude, channels rounded to 8) -> params, MACs, p50 latency ratio vs
unpruned on ort-cpu and torch, top-1 after distillation from the unpruned teacher (10 epochs
for the demo, as `torchship ship` does; 3 for the ResNet), and the distilled model in static
INT8 (`auto` preset, 256 training images) on ort-cpu vs the unpruned FP32 model, with its top-1.
Timings are comparable only inside one run: read the ratios, not the absolute numbers.

    python scripts/bench_prune.py [--min-time 1] [--epochs N] [--threads 2] [--json out.json]
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
from torchship.exporter.pruning.channels import PruneConfig, count_cost, prune_channels
from torchship.exporter.pruning.distill import (
    DistillConfig,
    RecoveryMode,
    evaluate_accuracy,
    recover,
)
from torchship.exporter.pruning.search import measure_latency
from torchship.fingerprint import machine_fingerprint
from torchship.loaded import to_torch_inputs
from torchship.models import demo_dataset, load_demo
from torchship.models.zoo import resnet18_style
from torchship.runtimes import BenchConfig, bench_runner
from torchship.sources import load_model

RATIOS = (0.3, 0.5, 0.7)
RUNTIMES = ("ort-cpu", "torch")
BATCH = 8


RESNET_TRAIN_EPOCHS = 8


def _models(args):
    """(label, model, train data, test data, distillation epochs) for each model."""
    train, test = _digits("train"), _digits("test")
    yield "demo", load_demo(), train, test, args.epochs or 10
    print("training the ResNet-18-style CNN on upsampled digits ...", flush=True)
    train64, test64 = _upsampled(train), _upsampled(test)
    model = load_model("torchship.models.zoo:resnet18_style")
    model = replace(model, module=resnet18_style(num_classes=10))
    config = DistillConfig(mode=RecoveryMode.FINETUNE, epochs=RESNET_TRAIN_EPOCHS, lr=1e-3)
    model, _ = recover(model, train64, config=config)
    yield "resnet18_style@64", model, train64, test64, args.epochs or 3


def _digits(split: str) -> dict:
    images, labels = demo_dataset(split)
    return {"image": images, "labels": labels}


def _upsampled(data: dict) -> dict:
    """1x32x32 digits as 3x64x64 images (each pixel 2x2, gray in all three channels)."""
    image = data["image"].repeat(2, axis=2).repeat(2, axis=3).repeat(3, axis=1)
    return {"image": np.ascontiguousarray(image, dtype=np.float32), "labels": data["labels"]}


def _int8(model, fp32_ms: float, train, test, *, args) -> dict:
    """The model in static INT8 on ort-cpu: speedup vs the unpruned FP32 ONNX, top-1."""
    config = BenchConfig(batches=(BATCH,), warmup=5, min_time_s=args.min_time, threads=args.threads)
    options = QuantizeOptions(bench=False, threads=args.threads, max_drop=100.0)
    with tempfile.TemporaryDirectory(prefix="bench-prune-") as tmp:
        onnx = export_model(model, Path(tmp), formats=["onnx"],
                            options=ExportOptions(dynamo=False))[0]  # fmt: skip
        calib = {"image": train["image"][:256]}
        result = quantize(onnx, Path(tmp) / "int8", calib=calib, eval_data=test,
                          options=options)  # fmt: skip
        p50 = bench_runner("ort-cpu", result.artifact, config=config, batch=BATCH)
        p50 = float(p50.latency_ms["p50"])
    top1 = result.report["accuracy"]["top1"]
    return {"int8_ms": p50, "int8_speedup": fp32_ms / p50, "int8_top1": top1}


def _row(label, ratio, model, base, *, args, train, test, teacher, epochs) -> dict:
    cost = count_cost(model.module, to_torch_inputs(model.inputs, model.example))
    row = {"model": label, "ratio": ratio, "macs": cost[0], "params": cost[1]}
    for runtime in RUNTIMES:
        p50 = measure_latency(model, runtime=runtime, batch=BATCH, min_time_s=args.min_time,
                              threads=args.threads)  # fmt: skip
        row[f"{runtime}_ms"] = p50
        row[f"{runtime}_speedup"] = base[runtime] / p50 if base else 1.0
    row["top1"] = evaluate_accuracy(model, test)
    if ratio:
        config = DistillConfig(epochs=epochs, seed=args.seed)
        model, _ = recover(model, train, teacher=teacher, config=config)
        row["top1_no_finetune"], row["top1"] = row["top1"], evaluate_accuracy(model, test)
    fp32_ms = base["ort-cpu"] if base else row["ort-cpu_ms"]
    row.update(_int8(model, fp32_ms, train, test, args=args))
    return row


def run(args) -> list[dict]:
    rows = []
    for label, model, train, test, epochs in _models(args):
        common = {"args": args, "train": train, "test": test, "teacher": model, "epochs": epochs}
        base = _row(label, 0.0, model, None, **common)
        base_ms = {r: base[f"{r}_ms"] for r in RUNTIMES}
        rows.append(base)
        for ratio in RATIOS:
            pruned = prune_channels(model, config=PruneConfig(ratio=ratio)).model
            pruned = replace(pruned, source=f"{label}@{ratio}")
            rows.append(_row(label, ratio, pruned, base_ms, **common))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--min-time", type=float, default=1.0)
    parser.add_argument(
        "--epochs", type=int, help="distillation epochs (default 10 demo, 3 ResNet)"
    )
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
        top1 = f"{r['top1']:.2%}"
        if r.get("top1_no_finetune") is not None:
            top1 += f" ({r['top1_no_finetune']:.2%})"
        int8_top1 = f"{r['int8_top1']:.2%}"
        print(f"{r['model']:<19} {r['ratio']:<5}  {r['params']:<9}  {r['macs']:<10}  "
              f"{r['ort-cpu_speedup']:>8.2f}  {r['torch_speedup']:>7.2f}  "
              f"{r['int8_speedup']:>6.2f}  {top1:<16} {int8_top1}")  # fmt: skip
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump({"machine": machine, "rows": rows}, f, indent=2)


if __name__ == "__main__":
    main()
