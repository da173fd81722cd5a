"""Checks on a finished artifact against its FP32 source: output parity and same-run timing."""

from __future__ import annotations

import gc
import itertools
import logging

from torchship.artifact import Artifact
from torchship.data import DataSet, ShortBatch

__all__ = ["parity_vs_fp32", "bench_vs_fp32", "bench_batch_for"]

log = logging.getLogger(__name__)

_PARITY_BATCHES = 4


def parity_vs_fp32(source: Artifact, artifact: Artifact, data: DataSet) -> dict:
    """Compare every output on the first eval batches with the precision's tolerance profile."""
    from torchship.exporter.parity import compare_arrays
    from torchship.runtimes import get_runner
    from torchship.runtimes.tolerance import tolerance_for

    profile = tolerance_for(artifact.precision.value)
    cases = []
    runner_cls = get_runner("ort-cpu")
    with runner_cls(source) as fp32, runner_cls(artifact) as candidate:
        for batch in itertools.islice(data.batches(short=ShortBatch.PAD), _PARITY_BATCHES):
            expected, got = fp32.infer(batch.feeds), candidate.infer(batch.feeds)
            for name in source.outputs:
                cases.append(compare_arrays(batch.origin, name, expected[name], got[name], profile))
    passed = all(c.passed for c in cases)
    worst = min(cases, key=lambda c: c.cosine) if cases else None
    return {
        "passed": passed,
        "profile": artifact.precision.value,
        "min_cosine_required": profile.min_cosine,
        "comparisons": len(cases),
        "min_cosine": None if worst is None else round(worst.cosine, 6),
        "max_abs": None if worst is None else round(max(c.max_abs for c in cases), 6),
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
    from torchship.runtimes import BenchConfig, bench_runner

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
