"""Engine artifacts on disk: the plan, its manifest entry, parity against the ONNX reference.

`build_engine_file` is what `torchship build-engine` runs: build (or take from the cache),
check parity on the GPU with the precision's tolerance profile, then write the plan and add it
to the `manifest.json` beside it (TensorRT version, GPU, compute capability, precision,
profiles, source ONNX hash). Nothing is written when the build or the parity check fails.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from torchship.artifact import Artifact, Format, Precision
from torchship.errors import ConfigError, ParityError
from torchship.files import atomic_path, atomic_write_json, make_parent, sha256_file
from torchship.fingerprint import machine_fingerprint, software_fingerprint
from torchship.locks import output_lock
from torchship.manifest import MANIFEST_NAME
from torchship.runtimes.base import get_runner
from torchship.runtimes.compare import CaseResult, ParityReport, compare_runs
from torchship.runtimes.tensorrt.builder import EngineOptions, ShapeRange
from torchship.runtimes.tensorrt.cache import (
    EngineCache,
    EngineInfo,
    build_engine,
    read_engine_info,
)
from torchship.runtimes.tolerance import tolerance_for
from torchship.specs import InputSpec, random_feeds

__all__ = [
    "EngineFileResult",
    "EngineParity",
    "engine_output_path",
    "build_engine_file",
    "engine_parity",
]

log = logging.getLogger(__name__)

_SCHEMA = "torchship.manifest/1"


@dataclass(frozen=True)
class EngineFileResult:
    artifact: Artifact
    info: EngineInfo
    from_cache: bool
    parity: dict | None
    manifest_path: Path


def engine_output_path(onnx_path: Path, out: str | Path | None, precision: Precision) -> Path:
    """`-o` as a file (.engine/.plan), a directory, or by default beside the ONNX file."""
    name = f"{onnx_path.stem}.{precision.value}.engine"
    if out is None:
        return onnx_path.parent / name
    out = Path(out)
    if out.suffix.lower() in (".engine", ".plan"):
        return out
    if out.exists() and not out.is_dir():
        raise ConfigError(f"-o {out}: exists and is neither a directory nor an .engine/.plan file")
    return out / name


def build_engine_file(
    onnx_path: str | Path,
    *,
    out: str | Path | None = None,
    options: EngineOptions | None = None,
    inputs: Sequence[InputSpec] | None = None,
    parity: bool = True,
    cache: EngineCache | None = None,
    command: Sequence[str] | None = None,
) -> EngineFileResult:
    """Build the engine for `onnx_path`, check it, write it with its manifest entry."""
    onnx = Artifact.open(onnx_path, inputs=inputs)
    if onnx.format is not Format.ONNX:
        raise ConfigError(f"{onnx_path}: build-engine takes an .onnx file, got {onnx.format.value}")
    options = options or EngineOptions(precision=onnx.precision)
    target = engine_output_path(onnx.path, out, options.precision)
    build = build_engine(onnx, options=options, cache=cache)
    details = {"tensorrt": build.info.to_dict()}
    make_parent(target)
    # the folder's lock (torchship.locks) over the engine and its manifest entry: two builds
    # into one folder would otherwise lose one's entry, and verify could see one without it
    with output_lock(target.parent):
        with atomic_path(target) as tmp:
            tmp.write_bytes(build.plan)
            staged = Artifact.create(
                tmp, format=Format.TENSORRT_ENGINE, inputs=onnx.inputs, outputs=onnx.outputs,
                precision=options.precision, details=details,
            )  # fmt: skip
            report = require_engine_parity(staged, onnx) if parity else None
        artifact = replace(staged, path=target)
        manifest = _add_to_manifest(artifact, onnx=onnx, parity=report, command=command)
    return EngineFileResult(artifact, build.info, build.cached, report, manifest)


@dataclass(frozen=True)
class EngineParity:
    """The parity report plus the top-1 agreement of 2-d (class score) outputs, if any."""

    report: ParityReport
    top1_agreement: float | None

    def to_dict(self) -> dict:
        return {**self.report.to_dict(), "top1_agreement": self.top1_agreement}


def engine_parity(
    engine: Artifact, reference: Artifact, *, num_random: int = 2, seed: int = 0
) -> EngineParity:
    """Compare `engine` (tensorrt) with `reference` ONNX (ort-cpu) at the profile's shapes.

    Uses the engine precision's tolerance profile (fp16/int8: cosine similarity). ParityError
    when an output is missing or has another shape than the reference's.
    """
    profile = tolerance_for(engine.precision.value)
    agreements: list[float] = []

    def check_case(result: CaseResult) -> None:
        for c in result.comparisons:
            if c.missing or c.shape_mismatch:
                # a missing output has always been reported as shape [0]
                shape = [0] if c.actual_shape is None else list(c.actual_shape)
                raise ParityError(
                    f"{engine.path.name}: output {c.output!r} on {c.case} has shape "
                    f"{shape}, the ONNX reference {list(c.shape)}"
                )
            want, have = result.expected[c.output], result.got[c.output]
            if want.ndim == 2 and want.shape[1] > 1:
                agreements.append(float(np.mean(want.argmax(1) == np.asarray(have).argmax(1))))

    cases = _parity_cases(engine, num_random=num_random, seed=seed)
    with get_runner("tensorrt")(engine) as runner, get_runner("ort-cpu")(reference) as ref:
        report = compare_runs(runner, cases, reference=ref, profile=profile, on_case=check_case)
    return EngineParity(report, float(np.mean(agreements)) if agreements else None)


def require_engine_parity(engine: Artifact, reference: Artifact) -> dict:
    """`engine_parity` as a dict; ParityError (one line) when a comparison failed."""
    result = engine_parity(engine, reference)
    if not result.report.passed:
        raise ParityError(result.report.message())
    log.info(result.report.message())
    return result.to_dict()


def _parity_cases(engine: Artifact, *, num_random: int, seed: int):
    info = read_engine_info(engine)
    ranges = {r.name: r for r in info.profiles} if info else {}
    specs = [_at(s, ranges.get(s.name), "opt") for s in engine.inputs]
    for i in range(num_random):
        yield f"random input #{i + 1} (opt shapes)", random_feeds(specs, seed=seed + i)
    if any(r.min != r.max for r in ranges.values()):
        for which in ("min", "max"):
            sized = [_at(s, ranges.get(s.name), which) for s in engine.inputs]
            yield f"random input ({which} shapes)", random_feeds(sized, seed=seed + num_random)


def _at(spec: InputSpec, r: ShapeRange | None, which: str) -> InputSpec:
    return spec if r is None else replace(spec, shape=tuple(getattr(r, which)))


def _add_to_manifest(
    artifact: Artifact, *, onnx: Artifact, parity: dict | None, command: Sequence[str] | None
) -> Path:
    """Add (or replace) the engine in the manifest beside it, creating one when there is none."""
    path = artifact.path.parent / MANIFEST_NAME
    data = _read_or_new(path, onnx)
    name = artifact.path.name
    entry = {"path": name, "sha256": sha256_file(artifact.path), "size_bytes": artifact.size_bytes}
    data["files"] = [f for f in data.get("files", []) if f.get("path") != name] + [entry]
    data["artifacts"] = [a for a in data.get("artifacts", []) if a.get("path") != name]
    data["artifacts"].append(artifact.to_dict())
    if parity is not None:
        data.setdefault("metrics", {}).setdefault("parity", {})[name] = parity
    data.setdefault("commands", {})[name] = list(command) if command is not None else None
    atomic_write_json(path, data)
    return path


def _read_or_new(path: Path, onnx: Artifact) -> dict:
    if path.is_file():
        try:
            data = json.loads(path.read_text())
            if isinstance(data, dict) and data.get("schema") == _SCHEMA:
                return data
        except ValueError:
            pass
        raise ConfigError(
            f"{path}: exists and is not a torchship manifest; write the engine to another "
            "directory with -o"
        )
    return {
        "schema": _SCHEMA,
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "source": {"onnx": onnx.path.name, "onnx_sha256": onnx.sha256},
        "inputs": [s.to_dict() for s in onnx.inputs],
        "outputs": list(onnx.outputs),
        "files": [],
        "artifacts": [],
        "metrics": {},
        "software": software_fingerprint(),
        "machine": machine_fingerprint(),
    }
