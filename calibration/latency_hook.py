"""The latency search's place in `quantize()`: after the accuracy budget, before the copy.

Kept apart from quantize.py so that file only calls `choose`; the search itself is in
`torchship.calibration.latency_search`, the region families in `torchship.calibration.regions`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from pathlib import Path

from torchship.calibration import latency_search
from torchship.calibration.proof import bench_batch_for
from torchship.calibration.regions import Graph, find_regions, name_unnamed_nodes
from torchship.calibration.sensitivity import FallbackResult
from torchship.interrupts import reraise_interrupt
from torchship.runtimes.bench import feeds_for_batch

__all__ = ["Shipped", "name_nodes", "choose"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Shipped:
    """What `quantize()` writes: the INT8 candidate excluding `excluded`, or the FP32 model."""

    excluded: tuple[str, ...]
    fallback: FallbackResult
    ships_fp32: bool = False


def name_nodes(pre: Path) -> None:
    named = name_unnamed_nodes(pre)
    if named:
        log.info("%s: named %d unnamed nodes (region exclusions need names)", pre.name, named)


def _enabled(run) -> tuple[bool, str]:
    opts = run.opts
    if run.report.get("mode") != "static":
        return False, "static INT8 only"
    if opts.latency_search is False:
        return False, "--no-latency-search"
    if run.report.get("preprocessing") == "transformer":
        return False, "encoder graph: its weight MatMuls are the only quantized regions"
    preset = (run.report.get("preset") or {}).get("name", "")
    if opts.latency_search is None and not preset.startswith("cpu"):
        return False, f"off by default for the {preset} preset (it is timed on its own runtime)"
    return True, ""


def choose(run, make, fallback: FallbackResult) -> Shipped:
    """Run the search when it applies; fill `run.report["latency_search"]`; say what ships."""
    on, why = _enabled(run)
    if not on:
        if run.report.get("mode") == "static":
            run.report["latency_search"] = {"ran": False, "reason": why}
        return Shipped(fallback.excluded, fallback)
    if not fallback.passed:
        run.report["latency_search"] = {"ran": False, "reason": "accuracy budget missed"}
        return Shipped(fallback.excluded, fallback)
    if fallback.all_fp32:  # nothing is quantized: a failure quantize reports, not a speed choice
        run.report["latency_search"] = {"ran": False, "reason": "every node is in FP32"}
        return Shipped(fallback.excluded, fallback)
    opts = run.opts
    pre = run.tmp / "preprocessed.onnx"
    regions = find_regions(pre)
    batch = bench_batch_for(run.source, opts.bench_batch)
    check = run.budget_check
    max_drop = 1.0 if opts.max_drop is None else opts.max_drop
    profile, estimates = _profile(run, pre, make(fallback.excluded), batch, regions)
    result = latency_search.search(
        regions,
        base_excluded=fallback.excluded,
        build=make,
        measure=lambda path: latency_search.measure_ratio(
            run.source, path, batch=batch, threads=opts.threads
        ),
        evaluate=check.evaluate,
        within=check.within,
        time_budget_s=opts.latency_search_time_s or latency_search.DEFAULT_TIME_S,
        estimates=estimates,
    )
    run.report["latency_search"] = {
        "ran": True,
        "batch": batch,
        "regions": [r.to_dict() for r in regions],
        **result.to_dict(),
        "profile": profile,
    }
    for line in result.table_lines():
        log.info("latency search: %s", line)
    # a winner that keeps every quantizable node in FP32 is the FP32 model timed as noise
    every_node = replace(fallback, excluded=result.excluded or ()).all_fp32
    if result.ships_fp32 or every_node:
        reason = result.reason
        if not result.ships_fp32:
            reason = "the fastest candidate keeps every quantizable node in FP32"
            run.report["latency_search"]["reason"] = reason
        run.report["shipped"] = "fp32"
        run.warn(
            f"shipping the FP32 model: {reason} (INT8 would be slower on ONNX Runtime); other "
            "runtimes' INT8 may pay: `torchship quantize SOURCE --target xnnpack` (ExecuTorch), "
            "or `torchship tune` to time every runtime"
        )
        same = check.same()
        run.report["accuracy"] = {**check.report(same), "max_drop": max_drop}
        kept = replace(fallback, excluded=(), accuracy=same, passed=True)
        return Shipped((), kept, ships_fp32=True)
    run.report["shipped"] = "int8"
    accuracy = check.evaluate(result.excluded)
    run.report["accuracy"] = {**check.report(accuracy), "max_drop": max_drop}
    chosen = replace(fallback, excluded=result.excluded, accuracy=accuracy,
                     passed=check.within(accuracy))  # fmt: skip
    return Shipped(result.excluded, chosen)


def _profile(run, pre: Path, base: Path, batch: int, regions) -> tuple[dict, dict]:
    """Per-node kernel time of the INT8 start and the FP32 graph; estimated saving per region."""
    try:
        feeds = feeds_for_batch(run.source, batch=batch, seed=0)
        graph = Graph.load(pre)
        threads = run.opts.threads
        int8 = latency_search.attribute(latency_search.profile_nodes(base, feeds, threads=threads),
                                        graph)  # fmt: skip
        fp32 = latency_search.attribute(latency_search.profile_nodes(pre, feeds, threads=threads),
                                        graph)  # fmt: skip
    except Exception as exc:  # the profile only orders the search; timing decides
        reraise_interrupt(exc)
        log.info("profiling failed (%s): searching in the default order", exc)
        return {"error": str(exc)}, {}
    return latency_search.profile_summary(int8, fp32), latency_search.region_estimates(
        regions, int8, fp32
    )
