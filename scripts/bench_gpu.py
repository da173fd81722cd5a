"""GPU benchmark: the demo and a ResNet-18-style CNN on every GPU path this machine has.

Paths: torch eager on CUDA (fp32, fp16), ort-cuda, ort-trt, native TensorRT fp32/fp16/int8
(int8 = the `tensorrt`-preset Q/DQ ONNX), each at batch 1 and 32. Per row: device time between
CUDA events (compute only, copies excluded) and host wall time of the whole call (host<->device
copies included), both p50 in ms; speedup is device time against torch eager fp32 at the same
batch; cosine is against eager fp32 on the CPU. A path that cannot run here gets a row saying why.

    python scripts/bench_gpu.py [--out DIR] [--batches 1,32] [--min-time S]
                                [--models demo,resnet18_style]

Writes DIR/bench_gpu.json and DIR/bench_gpu.md; exits 0 even when every path was skipped.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from torchship.artifact import Artifact, Precision
from torchship.errors import ToolchainError
from torchship.fingerprint import machine_fingerprint, software_fingerprint
from torchship.loaded import LoadedModel
from torchship.runtimes import Stats, get_runner
from torchship.runtimes.bench import feeds_for_batch
from torchship.runtimes.timing import measure

log = logging.getLogger("bench_gpu")


@dataclass(frozen=True)
class Variant:
    label: str
    runtime: str
    artifact: Artifact | None
    skip: str | None = None


def load(name: str) -> LoadedModel:
    if name == "demo":
        from torchship.models import load_demo

        return load_demo()
    from torchship.models.zoo import ZOO, zoo_inputs

    return LoadedModel(ZOO[name](), zoo_inputs(name), ("logits",), source=f"zoo:{name}")


def calibration_npz(model: LoadedModel, folder: Path) -> Path:
    """Demo test images, or 256 seeded random samples for the zoo model."""
    name = model.inputs[0].name
    if model.source == "demo":
        from torchship.models import demo_dataset

        data = demo_dataset("test")[0][:256]
    else:
        from torchship.specs import random_feeds

        data = random_feeds(model.inputs, seed=7, batch=256)[name]
    path = folder / "calib.npz"
    np.savez(path, **{name: data})
    return path


def build_variants(model: LoadedModel, folder: Path, max_batch: int) -> list[Variant]:
    from torchship.exporter import export_model

    (onnx,) = export_model(model, folder, formats=["onnx"])
    eager = model.eager()
    variants = [
        Variant("torch eager fp32", "torch-cuda", eager),
        Variant("torch eager fp16", "torch-cuda", replace(eager, precision=Precision.FP16)),
        Variant("ort-cuda fp32", "ort-cuda", onnx),
        Variant("ort-trt fp32", "ort-trt", onnx),
    ]
    for precision in (Precision.FP32, Precision.FP16):
        variants.append(engine_variant(onnx, precision, folder, max_batch))
    variants.append(int8_variant(model, onnx, folder, max_batch))
    return variants


def engine_variant(onnx: Artifact, precision: Precision, folder: Path, max_batch: int) -> Variant:
    label = f"tensorrt {precision.value}"
    reason = get_runner("tensorrt").unavailable_reason()
    if reason is not None:
        return Variant(label, "tensorrt", None, reason)
    from torchship.exporter.engines import build_engine_file
    from torchship.runtimes.tensorrt.builder import EngineOptions, ShapeRange

    ranges = tuple(
        ShapeRange(s.name, (1, *s.shape[1:]), (max_batch, *s.shape[1:]), (max_batch, *s.shape[1:]))
        for s in onnx.inputs
    )
    options = EngineOptions(precision=precision, profiles=ranges)
    try:
        result = build_engine_file(onnx.path, out=folder / "engines", options=options)
    except ToolchainError as exc:
        return Variant(label, "tensorrt", None, f"build failed: {exc}")
    return Variant(label, "tensorrt", result.artifact)


def int8_variant(model: LoadedModel, onnx: Artifact, folder: Path, max_batch: int) -> Variant:
    label = "tensorrt int8 (Q/DQ)"
    reason = get_runner("tensorrt").unavailable_reason()
    if reason is not None:
        return Variant(label, "tensorrt", None, reason)
    try:
        from torchship.calibration import QuantizeOptions, quantize
    except ImportError as exc:
        return Variant(label, "tensorrt", None, f"no torchship.calibration ({exc})")
    try:
        options = QuantizeOptions(target="tensorrt", bench=False)
        qdq = quantize(
            onnx.path, folder / "int8", calib=calibration_npz(model, folder), options=options
        )
    except ToolchainError as exc:
        return Variant(label, "tensorrt", None, f"quantization failed: {exc}")
    variant = engine_variant(
        replace(qdq.artifact, precision=Precision.INT8), Precision.INT8, folder, max_batch
    )
    return replace(variant, label=label)


def time_variant(variant: Variant, model: LoadedModel, batch: int, min_time: float) -> dict:
    row = {"path": variant.label, "runtime": variant.runtime, "batch": batch}
    reason = variant.skip or get_runner(variant.runtime).unavailable_reason()
    if reason is not None or variant.artifact is None:
        return {**row, "skipped": reason or "no artifact"}
    feeds = feeds_for_batch(variant.artifact, batch=batch, seed=0)
    try:
        with get_runner(variant.runtime)(variant.artifact) as runner:
            timer = runner.make_timer()
            got = runner.infer(feeds)
            samples = measure(
                lambda: runner.infer(feeds), warmup=10, iters=None, min_time_s=min_time,
                max_iters=5000, timer=timer,
            )  # fmt: skip
    except ToolchainError as exc:
        return {**row, "skipped": f"failed: {exc}"}
    device = Stats.from_samples(samples)
    host = Stats.from_samples(getattr(timer, "host_samples_ms", None) or samples)
    return {
        **row,
        "clock": timer.clock,
        "device_p50_ms": device.p50,
        "host_p50_ms": host.p50,
        "host_includes_copies": True,
        "throughput_per_s": batch / (host.p50 / 1e3),
        "cosine_vs_eager": cosine(model.run(feeds), got),
    }


def cosine(expected: dict, got: dict) -> float:
    a = np.concatenate([np.asarray(v, np.float64).ravel() for v in expected.values()])
    b = np.concatenate([np.asarray(got[k], np.float64).ravel() for k in expected])
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b) or 1.0))


def add_speedups(rows: list[dict]) -> None:
    base = {
        r["batch"]: r["device_p50_ms"]
        for r in rows
        if r["path"] == "torch eager fp32" and "device_p50_ms" in r
    }
    for r in rows:
        if "device_p50_ms" in r and r["batch"] in base:
            r["speedup_vs_eager_fp32"] = base[r["batch"]] / r["device_p50_ms"]


TABLE_HEAD = (
    "| path | batch | device p50 ms | host p50 ms (incl. copies) | items/s (host) "
    "| speedup vs eager fp32 (device) | cosine vs eager |"
)
GPU_RUNTIMES = ("torch-cuda", "ort-cuda", "ort-trt", "tensorrt")


def markdown(results: dict) -> str:
    gpu = results["machine"].get("gpu") or {}
    lines = [
        "## GPU benchmark (scripts/bench_gpu.py)",
        "",
        f"GPU: {gpu.get('name', 'none visible')} (sm {gpu.get('compute_capability', '-')}, "
        f"driver {gpu.get('driver', '-')}, CUDA {gpu.get('cuda', '-')}); software: "
        + ", ".join(f"{k} {v}" for k, v in results["software"].items() if v),
        "",
        "device = CUDA events around the compute only; host = wall time of the whole call, "
        "host<->device copies included.",
    ]
    for name, rows in results["models"].items():
        lines += ["", f"### {name}", "", TABLE_HEAD, "|---|---|---|---|---|---|---|"]
        for r in rows:
            if "skipped" in r:
                lines.append(f"| {r['path']} | {r['batch']} | skipped: {r['skipped']} | | | | |")
                continue
            speed = r.get("speedup_vs_eager_fp32")
            lines.append(
                f"| {r['path']} | {r['batch']} | {r['device_p50_ms']:.3f} | {r['host_p50_ms']:.3f} "
                f"| {r['throughput_per_s']:.0f} | {f'{speed:.2f}x' if speed else '-'} "
                f"| {r['cosine_vs_eager']:.5f} |"
            )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="gpu-report", help="output directory")
    parser.add_argument("--batches", default="1,32")
    parser.add_argument("--min-time", type=float, default=1.0, help="timed seconds per row")
    parser.add_argument("--models", default="demo,resnet18_style")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(name)s: %(message)s")
    batches = [int(b) for b in args.batches.split(",")]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results = {"machine": machine_fingerprint(), "software": software_fingerprint(), "models": {}}
    reasons = {r: get_runner(r).unavailable_reason() for r in GPU_RUNTIMES}
    for name in args.models.split(","):
        if all(reasons.values()):  # nothing to time: do not export or quantize for nothing
            rows = [
                {"path": r, "runtime": r, "batch": b, "skipped": why}
                for r, why in reasons.items()
                for b in batches
            ]
            results["models"][name] = rows
            continue
        model = load(name)
        with tempfile.TemporaryDirectory(prefix=f"bench-gpu-{name}-") as tmp:
            variants = build_variants(model, Path(tmp), max(batches))
            rows = [time_variant(v, model, b, args.min_time) for v in variants for b in batches]
        add_speedups(rows)
        results["models"][name] = rows
    (out / "bench_gpu.json").write_text(json.dumps(results, indent=2) + "\n")
    (out / "bench_gpu.md").write_text(markdown(results))
    sys.stdout.write(markdown(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
