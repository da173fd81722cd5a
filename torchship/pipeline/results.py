"""Typed results of a pipeline run, from the measurements to what `report.json` holds.

`Measurement` is one artifact timed on one runtime at one batch. The two tables built from
measurements are `BundleRow` (a `pipeline.toml` bundle: p50/p90 per batch, speedup vs eager)
and `ShipRow` (the demo's ship table: size, drop, speedups vs eager and the FP32 ONNX model,
how each row was checked). They stay dataclasses until a writer calls `to_dict()`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

from torchship.artifact import Artifact
from torchship.errors import CheckFailedError
from torchship.runtimes.bench import BenchDocument

__all__ = [
    "BundleRow",
    "GateResult",
    "Measurement",
    "PipelineResult",
    "ShipReport",
    "ShipRow",
    "require_pipeline",
]


@dataclass(frozen=True)
class Measurement:
    """One artifact on one runtime at one batch: accuracy (None without eval data), latency."""

    role: str
    #: "eager", or the artifact's path inside the bundle
    label: str
    artifact: Artifact
    runtime: str
    batch: int
    accuracy: float | None
    p50_ms: float
    p90_ms: float


@dataclass(frozen=True)
class BundleRow:
    """One line of a bundle's report: an artifact on one runtime at one batch."""

    artifact: str
    format: str
    runtime: str
    precision: str
    batch: int
    accuracy: float | None
    p50_ms: float
    p90_ms: float
    speedup_vs_eager: float

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class ShipRow:
    """One line of the ship table: an artifact on one runtime."""

    name: str
    format: str
    runtime: str
    precision: str
    size_bytes: int
    accuracy: float | None
    #: top-1 points lost vs eager (the unpruned FP32 model)
    drop_points: float | None
    p50_ms: float
    speedup_vs_eager: float
    #: vs the FP32 ONNX model on ort-cpu (on the same provider for ort-cuda / ort-trt rows)
    speedup_vs_onnx: float | None
    #: how it was checked: parity vs eager, or the INT8 accuracy budget
    check: str

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class GateResult:
    name: str
    passed: bool
    detail: str

    def to_dict(self) -> dict:
        return {"name": self.name, "passed": self.passed, "detail": self.detail}


@dataclass(frozen=True)
class ShipReport:
    """What `torchship ship` (the demo) returns and writes to `report.json`."""

    out_dir: Path
    rows: tuple[ShipRow, ...]
    batch: int
    bench: BenchDocument
    #: False when an INT8 artifact missed its accuracy budget (it is still written, marked)
    passed: bool = True
    #: the deployment search's choice (`release_summary`), None when the search did not run
    release: dict | None = None

    def to_dict(self) -> dict:
        return {
            "out_dir": str(self.out_dir),
            "batch": self.batch,
            "passed": self.passed,
            "release": self.release,
            "rows": [r.to_dict() for r in self.rows],
        }

    def report_json(self) -> dict:
        return self.to_dict()


@dataclass(frozen=True)
class PipelineResult:
    """What `torchship ship pipeline.toml` returns: the bundle, its gates and rows."""

    bundle: Path
    gates: tuple[GateResult, ...]
    rows: tuple[BundleRow, ...]
    #: the deployment search's choice, with `[tune]` (`release_summary`)
    release: dict | None = None

    @property
    def passed(self) -> bool:
        return all(g.passed for g in self.gates)

    def to_dict(self) -> dict:
        return {
            "bundle": str(self.bundle),
            "status": "passed" if self.passed else "failed",
            "gates": [g.to_dict() for g in self.gates],
            "release": self.release,
            "rows": [r.to_dict() for r in self.rows],
        }

    def report_json(self) -> dict:
        """`report.json` names the bundle folder, not where it was built."""
        return {**self.to_dict(), "bundle": self.bundle.name}


def require_pipeline(result: PipelineResult) -> PipelineResult:
    """Raise CheckFailedError naming the first failed gate (the bundle is already written)."""
    failed = [g for g in result.gates if not g.passed]
    if failed:
        raise CheckFailedError(
            f"gate {failed[0].name} failed: {failed[0].detail}; bundle {result.bundle} is "
            "marked failed"
        )
    return result
