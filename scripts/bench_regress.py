"""Calibrate the regression detector on real models: false alarms, power, time per verdict.

For each model (ONNX on ort-cpu), run many interleaved A/B verdicts exactly as
`torchship regress` does (alternating rounds, one session open at a time, spinning off):
- A/A: the same artifact on both sides; any `slower` verdict is a false alarm;
- A/B with a known slowdown: B's call adds a busy-wait of s x (A's median latency), a true
  slowdown of s on the same CPU; the fraction of `slower` verdicts is the detection power.
Reports, per model: false-alarm rate, power at each slowdown, the smallest slowdown detected
>= 95% of the time, and the wall time per verdict. Bounded by --budget-s (trials stop early).

    python scripts/bench_regress.py [--trials 20] [--slowdowns 5,10] [--rounds 10] [--iters 20]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import tempfile
import time
from pathlib import Path

from torchship.exporter import ExportOptions, export_model
from torchship.fingerprint import machine_fingerprint
from torchship.regression.stats import CompareConfig, Verdict, compare_rounds
from torchship.runtimes.bench import feeds_for_batch
from torchship.runtimes.interleaved import interleaved_rounds, runner_session
from torchship.sources import load_model

MODELS = {
    "demo": "demo",
    "resnet18_style@64": "torchship.models.zoo:resnet18_style",
    "tiny_encoder": "torchship.models.zoo:tiny_encoder",
}


def busy_wait(ms: float) -> None:
    end = time.perf_counter_ns() + int(ms * 1e6)
    while time.perf_counter_ns() < end:
        pass


def slowed(session, delay_ms: float):
    """The same session, each call followed by `delay_ms` of CPU work."""

    @contextlib.contextmanager
    def wrapped():
        with session() as call:
            yield lambda: (call(), busy_wait(delay_ms))

    return wrapped


def one_verdict(a, b, args, config: CompareConfig) -> tuple[Verdict, float, float]:
    start = time.perf_counter()
    samples = interleaved_rounds(
        {"a": a, "b": b}, rounds=args.rounds, iters_per_round=args.iters, warmup=args.warmup
    )
    result = compare_rounds(samples["a"], samples["b"], config=config)
    return result.verdict, result.ratio, time.perf_counter() - start


def calibrate_model(label: str, source: str, folder: Path, args, deadline: float) -> dict:
    model = load_model(source)
    (artifact,) = export_model(
        model, folder / label, formats=["onnx"], options=ExportOptions(dynamo=False)
    )
    feeds = feeds_for_batch(artifact, batch=args.batch, seed=0)
    base = runner_session("ort-cpu", artifact, feeds, threads=args.threads)
    probe = interleaved_rounds({"a": base}, rounds=2, iters_per_round=30, warmup=5)
    median_ms = statistics.median(probe["a"][1])
    config = CompareConfig(threshold_pct=args.threshold)
    row: dict = {"model": label, "p50_ms": round(median_ms, 3), "trials": {}}
    cases = [("A/A", 0.0)] + [(f"+{s:g}%", s) for s in args.slowdowns]
    times = []
    for name, pct in cases:
        b = slowed(base, median_ms * pct / 100) if pct else base
        verdicts, ratios = [], []
        for _ in range(args.trials):
            if time.monotonic() > deadline:
                break
            verdict, ratio, seconds = one_verdict(base, b, args, config)
            verdicts.append(verdict)
            ratios.append(ratio)
            times.append(seconds)
        slower = sum(v is Verdict.SLOWER for v in verdicts)
        row["trials"][name] = {
            "n": len(verdicts),
            "slower": slower,
            "rate": round(slower / len(verdicts), 3) if verdicts else None,
            "median_ratio": round(statistics.median(ratios), 4) if ratios else None,
        }
    row["seconds_per_verdict"] = round(statistics.median(times), 2) if times else None
    detected = [s for s in args.slowdowns if (row["trials"][f"+{s:g}%"]["rate"] or 0) >= 0.95]
    row["smallest_reliable_pct"] = min(detected) if detected else None
    return row


def print_summary(rows: list[dict], machine: dict, args) -> None:
    print(
        f"cpu: {machine.get('cpu_model')} ({machine.get('logical_cores')} logical cores), "
        f"isa: {', '.join(machine.get('isa') or [])}"
    )
    print(
        f"settings: rounds {args.rounds} x {args.iters} iters, batch {args.batch}, "
        f"threads {args.threads}, threshold {args.threshold:g}%"
    )
    for r in rows:
        cells = ", ".join(f"{k}: {v['slower']}/{v['n']} slower" for k, v in r["trials"].items())
        print(
            f"{r['model']:>18}  p50 {r['p50_ms']} ms  {cells}  "
            f"smallest reliable: {_pct(r['smallest_reliable_pct'])}  "
            f"{r['seconds_per_verdict']} s/verdict"
        )


def _pct(value: float | None) -> str:
    return "none of those tried" if value is None else f"{value:g}%"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--models", default=",".join(MODELS), help="comma-separated: " + ", ".join(MODELS)
    )
    parser.add_argument("--trials", type=int, default=20, help="verdicts per case")
    parser.add_argument("--slowdowns", default="5,10", help="percent, comma-separated")
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--iters", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--threshold", type=float, default=5.0)
    parser.add_argument(
        "--budget-s", type=float, default=900, help="stop starting trials after this"
    )
    parser.add_argument("--json", help="write the rows here")
    args = parser.parse_args()
    args.slowdowns = [float(s) for s in args.slowdowns.split(",")]
    deadline = time.monotonic() + args.budget_s
    machine = machine_fingerprint()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for label in args.models.split(","):
            rows.append(calibrate_model(label, MODELS[label], Path(tmp), args, deadline))
            print(json.dumps(rows[-1]), flush=True)
    print_summary(rows, machine, args)
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": machine, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
