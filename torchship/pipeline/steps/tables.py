"""The two tables built from measurements: bundle rows (every pipeline) and the ship table."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from torchship.artifact import Artifact, Format
from torchship.pipeline.results import BundleRow, Measurement, ShipRow
from torchship.pipeline.step import EAGER, FP32, PipelineState, Step, StepResult, artifact_role
from torchship.tune import Outcome, TuneReport

__all__ = ["ShipTableStep", "bundle_rows", "ship_rows"]

log = logging.getLogger(__name__)


def bundle_rows(measurements: Sequence[Measurement]) -> list[BundleRow]:
    """One row per measurement, with the speedup vs eager at the same batch."""
    eager = {m.batch: m.p50_ms for m in measurements if m.role == EAGER}
    return [
        BundleRow(
            artifact=m.label,
            format=m.artifact.format.value,
            runtime=m.runtime,
            precision=m.artifact.precision.value,
            batch=m.batch,
            accuracy=m.accuracy,
            p50_ms=m.p50_ms,
            p90_ms=m.p90_ms,
            speedup_vs_eager=round(eager[m.batch] / m.p50_ms, 4),
        )
        for m in measurements
    ]


def ship_rows(
    measurements: Sequence[Measurement],
    origins: Mapping[str, str],
    release: TuneReport | None = None,
) -> list[ShipRow]:
    """The ship table: drop in points and speedup vs eager, speedup vs the FP32 ONNX model on
    ort-cpu (on the same provider for ort-cuda/ort-trt rows), and how each row was checked. An
    INT8 row not faster than the FP32 artifact it came from (`origins`) on the same runtime is
    marked "slower"; with the deployment search's `release`, the chosen row is marked
    "release" and a row over the search's budget "over budget"."""
    outcomes = {} if release is None else {r.candidate.name: r for r in release.results}
    eager = next(m for m in measurements if m.role == EAGER)
    fp32_onnx = artifact_role(FP32, Format.ONNX)
    onnx_p50 = {m.runtime: m.p50_ms for m in measurements if m.role == fp32_onnx}
    by_role = {(m.role, m.runtime): m for m in measurements}
    rows = []
    for m in measurements:
        same = m.runtime if m.runtime.startswith("ort-") else "ort-cpu"
        reference = onnx_p50.get(same, onnx_p50.get("ort-cpu"))
        check = _check_label(m.artifact)
        outcome = outcomes.get(f"{m.label} on {m.runtime}")
        if outcome is not None and outcome.outcome is Outcome.CHOSEN:
            check += ", release"
        elif outcome is not None and outcome.outcome is Outcome.FAILED and "OVER" not in check:
            check += ", over budget"
        source = by_role.get((origins.get(m.role, ""), m.runtime))
        if m.artifact.details.get("shipped") == "fp32":
            check += ", FP32 shipped: INT8 was slower"  # the same graph as its source
        elif source is not None and source.p50_ms <= m.p50_ms:
            log.warning(
                "%s on %s is not faster than its FP32 source %s (%.3f vs %.3f ms): ship the "
                "FP32 one on this machine", m.label, m.runtime, source.label, m.p50_ms,
                source.p50_ms,
            )  # fmt: skip
            check += ", slower"
        rows.append(
            ShipRow(
                name=m.label,
                format=m.artifact.format.value,
                runtime=m.runtime,
                precision=m.artifact.precision.value,
                size_bytes=m.artifact.size_bytes,
                accuracy=m.accuracy,
                drop_points=_drop(eager.accuracy, m.accuracy),
                p50_ms=m.p50_ms,
                speedup_vs_eager=eager.p50_ms / m.p50_ms,
                speedup_vs_onnx=reference / m.p50_ms if reference else None,
                check=check,
            )
        )
    return rows


def _drop(reference: float | None, accuracy: float | None) -> float | None:
    """Top-1 points lost vs the reference; None without eval data."""
    if reference is None or accuracy is None:
        return None
    return round(100 * (reference - accuracy), 4)


def _check_label(artifact: Artifact) -> str:
    if artifact.format is Format.EAGER:
        return "reference"
    if "passed" in artifact.details:  # INT8: accuracy budget on real data
        return "in budget" if artifact.details["passed"] else "OVER BUDGET"
    return "pass"


@dataclass(frozen=True)
class ShipTableStep(Step):
    """The demo's ship table, from the measurements."""

    name = "table"

    def run(self, state: PipelineState) -> StepResult:
        rows = ship_rows(state.measurements, state.origins, state.search)
        return StepResult(table=tuple(rows))
