"""The report step: the reports and then `manifest.json`, which lists every file in the bundle."""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass

from torchship.manifest import build_manifest, write_manifest
from torchship.pipeline.results import PipelineResult, ShipReport
from torchship.pipeline.step import FP32, PipelineState, Step, StepResult
from torchship.pipeline.writers import write_reports

__all__ = ["ReportKind", "ReportStep", "pipeline_result", "ship_report"]


class ReportKind(enum.Enum):
    #: report.json is the ship table (`torchship ship` on the demo)
    SHIP = "ship"
    #: report.json is the gated bundle result (`torchship ship pipeline.toml`)
    BUNDLE = "bundle"


def ship_report(state: PipelineState) -> ShipReport:
    """The ship table's report; it fails when an INT8 artifact missed its accuracy budget."""
    passed = all(a.details.get("passed", True) for a in state.shipped())
    batch = state.measurements[0].batch
    return ShipReport(state.bundle_dir, state.table, batch, state.bench, passed, state.release)


def pipeline_result(state: PipelineState) -> PipelineResult:
    """The bundle's result; it fails when a gate failed."""
    return PipelineResult(state.bundle_dir, state.gates, state.rows, state.release)


@dataclass(frozen=True)
class ReportStep(Step):
    """bench.json, report.json and the `files` asked for, then the manifest, with `status`."""

    name = "report"
    writes = True

    kind: ReportKind
    #: report.md's heading ("<name> <version>") and the JUnit suite name
    title: str = ""
    suite: str = ""
    #: beside bench.json and report.json: any of report.md, junit.xml, latency.png
    files: tuple[str, ...] = ()
    #: the configuration that made the bundle, kept in the manifest as "pipeline"
    pipeline: Mapping | None = None

    def run(self, state: PipelineState) -> StepResult:
        report = ship_report(state) if self.kind is ReportKind.SHIP else pipeline_result(state)
        write_reports(
            state.stage, report, bench=state.bench, rows=state.rows, gates=state.gates,
            title=self.title, suite=self.suite, files=self.files,
        )  # fmt: skip
        extra = {"status": "passed" if report.passed else "failed", "release": report.release}
        if self.pipeline is not None:
            extra["pipeline"] = self.pipeline
        manifest = build_manifest(
            state.stage,
            model=state.models[FP32],
            artifacts=state.shipped(),
            command=state.command,
            metrics={"parity": state.parity, "rows": [r.to_dict() for r in report.rows]},
            gates={g.name: g.to_dict() for g in state.gates},
            extra={**extra, "pruning": state.pruning},
        )
        write_manifest(state.stage, manifest)
        return StepResult()
