"""`torchship ship` on the embedded demo: export, validate, measure accuracy, benchmark, bundle."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from torchship.artifact import FILE_FORMATS, Artifact, Format
from torchship.files import atomic_dir, atomic_write_json
from torchship.manifest import build_manifest, write_manifest

__all__ = ["ShipRow", "ShipReport", "ship_demo", "runtimes_for", "evaluate_top1"]

log = logging.getLogger(__name__)

#: Extra runtimes tried for an ONNX artifact when present (GPU machines).
_ONNX_RUNTIMES = ("ort-cpu", "ort-cuda", "ort-trt")
_EVAL_BATCH = 50


@dataclass(frozen=True)
class ShipRow:
    """One line of the ship table: an artifact on one runtime."""

    name: str
    format: str
    runtime: str
    precision: str
    size_bytes: int
    accuracy: float | None
    p50_ms: float
    speedup_vs_eager: float
    parity: str


@dataclass(frozen=True)
class ShipReport:
    out_dir: Path
    rows: tuple[ShipRow, ...]
    batch: int
    bench: dict

    def to_dict(self) -> dict:
        return {
            "out_dir": str(self.out_dir),
            "batch": self.batch,
            "rows": [asdict(r) for r in self.rows],
        }


def runtimes_for(fmt: Format) -> list[str]:
    """The runtimes able to run `fmt` on this machine."""
    from torchship.runtimes import available_runners, default_runtime_for

    here = set(available_runners())
    if fmt is Format.ONNX:
        return [r for r in _ONNX_RUNTIMES if r in here]
    name = default_runtime_for(fmt) if fmt is not Format.EAGER else "torch"
    return [name] if name in here else []


def evaluate_top1(
    runtime: str, artifact: Artifact, images: np.ndarray, labels: np.ndarray
) -> float:
    """Top-1 accuracy of `artifact` run through `runtime` on a labelled set."""
    from torchship.models import top1_accuracy
    from torchship.runtimes import get_runner

    name = artifact.inputs[0].name
    with get_runner(runtime)(artifact) as runner:
        logits = [
            next(iter(runner.infer({name: images[i : i + _EVAL_BATCH]}).values()))
            for i in range(0, len(images), _EVAL_BATCH)
        ]
    return top1_accuracy(np.concatenate(logits), labels)


def ship_demo(
    out_dir: str | Path = "dist/demo",
    *,
    bench_config=None,
    command: Sequence[str] | None = None,
    progress: Callable[[str], None] | None = None,
) -> ShipReport:
    """Run the whole pipeline on the embedded demo and write the bundle to `out_dir` atomically."""
    from torchship.api import save_references
    from torchship.exporter import export_model, require_parity
    from torchship.models import demo_dataset, load_demo
    from torchship.runtimes import BenchConfig, bench_document

    step = progress or (lambda message: None)
    config = bench_config or BenchConfig(batches=(8,))
    model = load_demo()
    images, labels = demo_dataset("test")
    with atomic_dir(out_dir) as stage:
        step("exporting the demo to " + ", ".join(FILE_FORMATS))
        artifacts = [model.eager(), *export_model(model, stage, formats=FILE_FORMATS)]
        parity = {}
        for artifact in artifacts[1:]:
            step(f"checking {artifact.path.name} against eager PyTorch")
            parity[artifact.path.name] = require_parity(model, artifact).to_dict()
        save_references(model, stage)
        rows, results = _measure(artifacts, images, labels, config=config, step=step)
        bench = bench_document(results)
        atomic_write_json(stage / "bench.json", bench)
        report = ShipReport(Path(out_dir), tuple(rows), config.batches[0], bench)
        atomic_write_json(stage / "report.json", report.to_dict())
        manifest = build_manifest(
            stage,
            model=model,
            artifacts=artifacts[1:],
            command=command,
            metrics={"parity": parity, "rows": [asdict(r) for r in rows]},
        )
        write_manifest(stage, manifest)
    return report


def _measure(artifacts: list[Artifact], images, labels, *, config, step):
    from torchship.runtimes import bench_runner

    rows, results, eager_p50 = [], [], None
    batch = config.batches[0]
    for artifact in artifacts:
        for runtime in runtimes_for(artifact.format):
            label = "eager" if artifact.format is Format.EAGER else artifact.path.name
            step(f"accuracy and latency of {label} on {runtime}")
            accuracy = evaluate_top1(runtime, artifact, images, labels)
            result = bench_runner(runtime, artifact, config=config, batch=batch)
            results.append(result)
            p50 = result.latency_ms["p50"]
            eager_p50 = eager_p50 or p50
            rows.append(
                ShipRow(
                    name=label,
                    format=artifact.format.value,
                    runtime=runtime,
                    precision=artifact.precision.value,
                    size_bytes=artifact.size_bytes,
                    accuracy=accuracy,
                    p50_ms=p50,
                    speedup_vs_eager=eager_p50 / p50,
                    parity="reference" if artifact.format is Format.EAGER else "pass",
                )
            )
    return rows, results
