"""Checks on a finished artifact against its FP32 source: output parity and same-run timing."""

from __future__ import annotations

import gc
import itertools
import logging

from torchship.artifact import Artifact
from torchship.data import DataSet, ShortBatch
from torchship.runtimes import BenchConfig, bench_runner, get_runner
from torchship.runtimes.compare import compare_runs
from torchship.runtimes.tolerance import tolerance_for

__all__ = ["parity_vs_fp32", "bench_vs_fp32", "bench_batch_for"]

log = logging.getLogger(__name__)

_PARITY_BATCHES = 4


def parity_vs_fp32(source: Artifact, artifact: Artifact, data: DataSet) -> dict:
    """Compare every output on the first eval batches with the precision's tolerance profile."""
    profile = tolerance_for(artifact.precision.value)
    batches = itertools.islice(data.batches(short=ShortBatch.PAD), _PARITY_BATCHES)
    with get_runner("ort-cpu")(source) as fp32:
        report = compare_runs(
            artifact,
            ((batch.origin, batch.feeds) for batch in batches),
            runtime="ort-cpu",
            reference=fp32,
            outputs=source.outputs,
            profile=profile,
        )
    # a missing output or another shape has no errors to report; it still fails `passed`
    measured = [c for c in report.cases if not c.reason]
    worst = min(measured, key=lambda c: c.cosine, default=None)
    return {
        "passed": report.passed,
        "profile": artifact.precision.value,
        "min_cosine_required": profile.min_cosine,
        "comparisons": len(report.cases),
        "min_cosine": None if worst is None else round(worst.cosine, 6),
        "max_abs": None if worst is None else round(max(c.max_abs for c in measured), 6),
    }


def bench_batch_for(artifact: Artifact, requested: int | None = None) -> int:
    """`requested`, else 8 when every input has a dynamic batch axis, else the fixed batch."""
    specs = artifact.inputs
    dynamic = all(s.shape and 0 in s.dynamic for s in specs)
    if requested is not None and dynamic:
        return requested
    return 8 if dynamic else (specs[0].shape[0] if specs and specs[0].shape else 1)


def bench_vs_fp32(source: Artifact, artifact: Artifact, *, options) -> dict:
    """p50 of FP32 and candidate on ort-cpu in one run (sessions released between)."""
    batch = bench_batch_for(artifact, options.bench_batch)
    config = BenchConfig(
        warmup=5, min_time_s=options.bench_min_time_s, batches=(batch,), threads=options.threads
    )
    fp32 = bench_runner("ort-cpu", source, config=config, batch=batch)
    gc.collect()
    candidate = bench_runner("ort-cpu", artifact, config=config, batch=batch)
    gc.collect()
    p50, ref = candidate.latency_ms["p50"], fp32.latency_ms["p50"]
    return {
        "runtime": "ort-cpu",
        "batch": batch,
        "threads": options.threads,
        "p50_ms": round(p50, 4),
        "fp32_p50_ms": round(ref, 4),
        "speedup": round(ref / p50, 4) if p50 > 0 else 0.0,
        "faster": p50 < ref,
    }
