"""Checks on a finished artifact against its FP32 source: output parity and same-run timing."""

from __future__ import annotations

import itertools
import logging

from torchship.artifact import Artifact
from torchship.data import DataSet, ShortBatch
from torchship.runtimes import get_runner
from torchship.runtimes.compare import compare_runs
from torchship.runtimes.interleaved import interleaved_ab
from torchship.runtimes.tolerance import tolerance_for

__all__ = ["parity_vs_fp32", "bench_vs_fp32", "bench_batch_for"]

log = logging.getLogger(__name__)

_PARITY_BATCHES = 4
_TIMING_ROUNDS = 6


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
    """FP32 and candidate on ort-cpu, timed in alternating rounds in one run (`timed_vs_fp32`);
    each side runs about `options.bench_min_time_s` * 2 seconds in all."""
    return timed_vs_fp32(
        source, artifact, runtime="ort-cpu", batch=bench_batch_for(artifact, options.bench_batch),
        threads=options.threads, seconds=2 * options.bench_min_time_s,
    )  # fmt: skip


def timed_vs_fp32(
    source: Artifact,
    artifact: Artifact,
    *,
    runtime: str,
    batch: int,
    threads: int | None,
    seconds: float,
) -> dict:
    """FP32 `source` and `artifact` on `runtime`, timed in alternating rounds in one run.

    `speedup` is FP32 over candidate latency, the median of per-round ratios, so load that
    changes during the run hits both sides alike (runtimes.interleaved); the p50s pool all
    rounds. Each side runs about `seconds` in all.
    """
    rounds = _TIMING_ROUNDS
    ab = interleaved_ab(
        source, artifact, runtime=runtime, batch=batch, threads=threads,
        rounds=rounds, iters_per_round=200, round_s=seconds / rounds,
    )  # fmt: skip
    speedup = 1.0 / ab.ratio if ab.ratio > 0 else 0.0
    return {
        "runtime": runtime,
        "batch": batch,
        "threads": threads,
        "p50_ms": round(ab.b_latency_ms.p50, 4),
        "fp32_p50_ms": round(ab.a_latency_ms.p50, 4),
        "speedup": round(speedup, 4),
        "faster": speedup > 1.0,
        "timed": f"interleaved, {rounds} rounds",
    }
