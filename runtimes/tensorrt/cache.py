"""Engines as things with an identity: what they were built for, a cache, compatibility checks.

A TensorRT engine only runs on the GPU architecture and TensorRT version it was built with
(unless built hardware-compatible, then on any GPU from Ampere on). `EngineInfo` records that
identity; `check_compatible` turns a mismatch into a BackendUnavailableError before TensorRT
gets to crash on it; `EngineCache` keys plans by (ONNX hash, precision, profiles, calibration,
GPU, TensorRT version) so an unchanged model is never rebuilt.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from torchship.artifact import Artifact, Format
from torchship.errors import BackendUnavailableError, ConfigError
from torchship.files import atomic_path, atomic_write_json
from torchship.manifest import MANIFEST_NAME
from torchship.runtimes.tensorrt.builder import (
    EngineOptions,
    ShapeRange,
    build_mode,
    build_serialized,
    profiles_for,
)
from torchship.runtimes.tensorrt.calibrator import calibration_batch, data_identity, make_calibrator
from torchship.runtimes.tensorrt.compat import capabilities, import_tensorrt, parse_version

__all__ = [
    "read_engine_info",
    "GpuIdentity",
    "EngineInfo",
    "EngineBuild",
    "EngineCache",
    "gpu_identity",
    "cache_root",
    "engine_cache_key",
    "build_engine",
    "check_compatible",
]

log = logging.getLogger(__name__)

#: Hardware-compatible (AMPERE_PLUS) engines run on compute capability >= this.
_AMPERE = (8, 0)


@dataclass(frozen=True)
class GpuIdentity:
    name: str
    compute_capability: str  # "8.6"


def gpu_identity() -> GpuIdentity:
    """The current CUDA device as torch sees it; BackendUnavailableError without one."""
    import torch

    if not torch.cuda.is_available():
        raise BackendUnavailableError("TensorRT needs an NVIDIA GPU; torch sees no CUDA device")
    props = torch.cuda.get_device_properties(torch.cuda.current_device())
    return GpuIdentity(props.name, f"{props.major}.{props.minor}")


@dataclass(frozen=True)
class EngineInfo:
    """What an engine was built from and for; stored in its manifest and in the cache."""

    tensorrt_version: str
    gpu_name: str
    compute_capability: str
    precision: str
    mode: str
    strongly_typed: bool
    profiles: tuple[ShapeRange, ...]
    onnx_file: str
    onnx_sha256: str
    hardware_compat: bool = False
    workspace_mb: int | None = None
    calibration: dict | None = None
    cache_key: str = ""

    def to_dict(self) -> dict:
        data = asdict(self)
        data["profiles"] = [p.to_dict() for p in self.profiles]
        return data

    @classmethod
    def from_dict(cls, data: dict) -> EngineInfo:
        try:
            fields = {k: data[k] for k in cls.__dataclass_fields__ if k in data}
            fields["profiles"] = tuple(ShapeRange.from_dict(p) for p in data["profiles"])
            return cls(**fields)
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigError(f"engine description is incomplete or malformed ({exc})") from None


@dataclass(frozen=True)
class EngineBuild:
    plan: bytes
    info: EngineInfo
    cached: bool


def cache_root() -> Path:
    """$TORCHSHIP_CACHE_DIR, else $XDG_CACHE_HOME/torchship, else ~/.cache/torchship."""
    env = os.environ.get("TORCHSHIP_CACHE_DIR")
    if env:
        return Path(env)
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "torchship"


class EngineCache:
    """Plans and their EngineInfo under `<root>/tensorrt/`, plus timing/calibration caches."""

    def __init__(self, root: Path | None = None) -> None:
        self.dir = Path(root or cache_root()) / "tensorrt"

    def load(self, key: str) -> tuple[bytes, EngineInfo] | None:
        plan, meta = self.dir / f"{key}.engine", self.dir / f"{key}.json"
        if not (plan.is_file() and meta.is_file()):
            return None
        try:
            info = EngineInfo.from_dict(json.loads(meta.read_text()))
        except (ValueError, ConfigError):
            log.warning("tensorrt: ignoring a damaged engine cache entry %s", meta)
            return None
        return plan.read_bytes(), info

    def store(self, key: str, plan: bytes, info: EngineInfo) -> None:
        # The plan first, its description last: an entry with a .json is always complete.
        with atomic_path(self.dir / f"{key}.engine") as tmp:
            tmp.write_bytes(plan)
        atomic_write_json(self.dir / f"{key}.json", info.to_dict())

    def timing_cache_path(self, gpu: GpuIdentity, trt_version: str) -> Path:
        """One timing cache per GPU model and TensorRT version, shared by every build."""
        return (
            self.dir / f"timing-{_slug(gpu.name)}-sm{gpu.compute_capability}-trt{trt_version}.cache"
        )

    def calibration_cache_path(self, *, onnx_sha256: str, data_id: str, method: str) -> Path:
        return self.dir / f"calib-{onnx_sha256[:16]}-{data_id[:16]}-{method}.cache"


def engine_cache_key(
    *,
    onnx_sha256: str,
    options: EngineOptions,
    profiles: tuple[ShapeRange, ...],
    gpu: GpuIdentity,
    trt_version: str,
    calib_id: str | None,
) -> str:
    """A stable hash of everything that changes the engine (not the workspace limit)."""
    blob = {
        "onnx": onnx_sha256,
        "precision": options.precision.value,
        "profiles": [p.to_dict() for p in profiles],
        "gpu": [gpu.name, gpu.compute_capability],
        "tensorrt": trt_version,
        "calibrator": options.calibrator,
        "calibration": calib_id,
        "calib_samples": options.calib_samples,
        "calib_batch": options.calib_batch,
        "hardware_compat": options.hardware_compat,
    }
    return hashlib.sha256(json.dumps(blob, sort_keys=True).encode()).hexdigest()[:32]


def build_engine(
    onnx: Artifact, *, options: EngineOptions | None = None, cache: EngineCache | None = None
) -> EngineBuild:
    """A serialized engine for the ONNX `onnx`, from the cache when an identical one was built."""
    if onnx.format is not Format.ONNX:
        raise ConfigError(
            f"{onnx.path}: TensorRT engines are built from ONNX, not {onnx.format.value}"
        )
    options = options or EngineOptions(precision=onnx.precision)
    profiles = profiles_for(onnx.inputs, options.profiles)  # bad shapes fail before TensorRT
    trt, caps = import_tensorrt()
    gpu = gpu_identity()
    cache = cache or EngineCache()
    calib_id = _calib_id(options)
    key = engine_cache_key(
        onnx_sha256=onnx.sha256, options=options, profiles=profiles, gpu=gpu,
        trt_version=caps.version, calib_id=calib_id,
    )  # fmt: skip
    hit = cache.load(key) if options.use_cache else None
    if hit is not None:
        log.info("tensorrt: engine cache hit for %s (%s)", onnx.path.name, key)
        return EngineBuild(hit[0], hit[1], cached=True)
    calibrator = _calibrator(trt, onnx, options, profiles, cache, calib_id)
    plan, mode = build_serialized(
        trt, caps, onnx.path, profiles=profiles, options=options, calibrator=calibrator,
        timing_cache=options.timing_cache or cache.timing_cache_path(gpu, caps.version),
    )  # fmt: skip
    if calibrator is not None and calibrator.error is not None:
        raise calibrator.error
    info = EngineInfo(
        tensorrt_version=caps.version, gpu_name=gpu.name,
        compute_capability=gpu.compute_capability, precision=options.precision.value,
        mode=mode.mode, strongly_typed=mode.strongly_typed, profiles=profiles,
        onnx_file=onnx.path.name, onnx_sha256=onnx.sha256,
        hardware_compat=options.hardware_compat, workspace_mb=options.workspace_mb,
        calibration=_calibration_record(options, calib_id, calibrator), cache_key=key,
    )  # fmt: skip
    if options.use_cache:
        cache.store(key, plan, info)
    return EngineBuild(plan, info, cached=False)


def check_compatible(info: EngineInfo, *, path: Path, trt_version: str, gpu: GpuIdentity) -> None:
    """BackendUnavailableError when the engine cannot run with this TensorRT on this GPU."""
    problems = []
    if parse_version(info.tensorrt_version) != parse_version(trt_version):
        problems.append(f"TensorRT {info.tensorrt_version} (here: {trt_version})")
    if info.hardware_compat:
        if _cc(gpu.compute_capability) < _AMPERE:
            problems.append(f"Ampere or newer GPUs (here: {gpu.name}, sm {gpu.compute_capability})")
    elif info.compute_capability != gpu.compute_capability:
        problems.append(
            f"{info.gpu_name} with compute capability {info.compute_capability} "
            f"(here: {gpu.name}, {gpu.compute_capability})"
        )
    if problems:
        raise BackendUnavailableError(
            f"{path}: built for {' and '.join(problems)}; TensorRT engines are not portable "
            f"across GPUs or TensorRT versions, rebuild it here with `torchship build-engine "
            f"{info.onnx_file} --precision {info.precision}`"
        )
    if info.gpu_name != gpu.name:
        log.warning(
            "%s was built on %s and runs on %s (same compute capability); it may be slower",
            path.name, info.gpu_name, gpu.name,
        )  # fmt: skip


def _calib_id(options: EngineOptions) -> str | None:
    if options.calib_data is None:
        return None
    return data_identity(options.calib_data)


def _calibrator(trt: Any, onnx: Artifact, options, profiles, cache: EngineCache, calib_id):
    if options.calibrator is None:
        return None
    build_mode(options, capabilities(trt), onnx_path=onnx.path)  # version check before reading data
    return make_calibrator(
        trt, method=options.calibrator, source=options.calib_data, specs=onnx.inputs,
        batch=calibration_batch(profiles, options.calib_batch), samples=options.calib_samples,
        cache_path=cache.calibration_cache_path(
            onnx_sha256=onnx.sha256, data_id=calib_id or "", method=options.calibrator
        ),
    )  # fmt: skip


def _calibration_record(options: EngineOptions, calib_id: str | None, calibrator) -> dict | None:
    if calibrator is None:
        return None
    return {
        "method": options.calibrator,
        "source": str(options.calib_data),
        "data_sha256": calib_id,
        "batches_fed": calibrator.batches_fed,  # 0 when TensorRT reused the calibration cache
        "batch": calibrator.get_batch_size(),
    }


def _cc(text: str) -> tuple[int, int]:
    major, _, minor = text.partition(".")
    return int(major), int(minor or 0)


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-").lower() or "gpu"


def read_engine_info(artifact: Artifact) -> EngineInfo | None:
    """The engine's build record: from the artifact itself, else from the manifest beside it."""
    data = artifact.details.get("tensorrt")
    if data is None:
        entry = _manifest_entry(artifact.path)
        data = (entry or {}).get("details", {}).get("tensorrt")
    return EngineInfo.from_dict(data) if data is not None else None


def _manifest_entry(path: Path) -> dict | None:
    manifest = path.parent / MANIFEST_NAME
    try:
        data = json.loads(manifest.read_text())
        return next(a for a in data.get("artifacts", []) if a.get("path") == path.name)
    except (OSError, ValueError, StopIteration, AttributeError):
        return None
