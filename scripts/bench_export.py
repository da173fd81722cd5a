"""Benchmark: ORT-CPU FP32 vs eager torch p50 for the demo and a ResNet-18-style CNN at 64x64.

Prints the ratios from one run (batch 1 and 8) with the machine's CPU flags. Timings are only
comparable inside one run: compare the ratios, not the absolute numbers.

    python scripts/bench_export.py [--min-time 2] [--threads 2] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from torchship.exporter import export_model, require_parity
from torchship.fingerprint import machine_fingerprint
from torchship.runtimes import BenchConfig, bench_document, bench_runner
from torchship.sources import load_model

MODELS = {
    "demo": "demo",
    "resnet18_style@64": "torchship.models.zoo:resnet18_style",
}
BATCHES = (1, 8)


def run(min_time: float, threads: int | None) -> tuple[list[dict], list]:
    rows, results = [], []
    config = BenchConfig(batches=BATCHES, min_time_s=min_time, threads=threads, warmup=20)
    with tempfile.TemporaryDirectory() as tmp:
        for label, source in MODELS.items():
            model = load_model(source)
            out = Path(tmp) / label
            (onnx_artifact,) = export_model(model, out, formats=["onnx"])
            require_parity(model, onnx_artifact)
            for batch in BATCHES:
                eager = bench_runner("torch", model.eager(), config=config, batch=batch)
                ort = bench_runner("ort-cpu", onnx_artifact, config=config, batch=batch)
                results += [eager, ort]
                rows.append(
                    {
                        "model": label,
                        "batch": batch,
                        "torch_p50_ms": eager.p50_ms,
                        "ort_p50_ms": ort.p50_ms,
                        "ort_speedup": eager.p50_ms / ort.p50_ms,
                    }
                )
    return rows, results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--min-time", type=float, default=2.0)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--json", help="write the torchship.bench/1 document here")
    args = parser.parse_args()
    rows, results = run(args.min_time, args.threads)
    machine = machine_fingerprint()
    flags = [name for name, on in machine["isa"].items() if on]
    print(f"cpu: {machine['cpu_model']}, {machine['logical_cores']} cores, flags: {flags}")
    print(f"{'model':<20}{'batch':>6}{'torch p50 ms':>14}{'ort p50 ms':>12}{'ort vs torch':>14}")
    for r in rows:
        print(
            f"{r['model']:<20}{r['batch']:>6}{r['torch_p50_ms']:>14.3f}{r['ort_p50_ms']:>12.3f}"
            f"{r['ort_speedup']:>13.2f}x"
        )
    if args.json:
        Path(args.json).write_text(json.dumps(bench_document(results).to_dict(), indent=2))


if __name__ == "__main__":
    main()
