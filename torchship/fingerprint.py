"""Machine and software fingerprints saved with every benchmark, manifest and baseline."""

from __future__ import annotations

import copy
import functools
import hashlib
import importlib.metadata
import json
import logging
import os
import platform
from pathlib import Path
from typing import Any

__all__ = [
    "ISA_FLAGS",
    "ARM_ISA_FLAGS",
    "machine_fingerprint",
    "software_fingerprint",
    "fingerprint_key",
]

log = logging.getLogger(__name__)

#: CPU features that change which kernels (and which quantization presets) run fast.
ISA_FLAGS = (
    "sse4_2", "avx", "avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx512_bf16",
    "avx_vnni", "amx_tile", "amx_int8", "amx_bf16",
)  # fmt: skip
#: The Arm counterparts (/proc/cpuinfo `Features`): NEON, fp16, int8 dot product, SVE, i8mm, bf16.
ARM_ISA_FLAGS = ("asimd", "asimdhp", "asimddp", "sve", "sve2", "i8mm", "bf16")

_CPUINFO = Path("/proc/cpuinfo")
_MEMINFO = Path("/proc/meminfo")


def machine_fingerprint() -> dict[str, Any]:
    """cpu_model, logical_cores, os, isa flags (+ `vnni`), memory_mb, gpu (a dict, or None)."""
    return copy.deepcopy(dict(_machine()))


def software_fingerprint() -> dict[str, Any]:
    """Versions of python, torch, onnx, onnxruntime, tensorrt (None when absent), torchship."""
    return dict(_software())


def fingerprint_key(machine: dict[str, Any], software: dict[str, Any]) -> str:
    """A short stable hash of what decides comparability: CPU, cores, ISA, GPU and versions."""
    gpu = machine.get("gpu") or {}
    relevant = {
        "cpu": machine.get("cpu_model"),
        "cores": machine.get("logical_cores"),
        "isa": machine.get("isa"),
        "gpu": gpu.get("name"),
        "software": {k: software.get(k) for k in sorted(software)},
    }
    blob = json.dumps(relevant, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


@functools.lru_cache(maxsize=1)
def _machine() -> tuple[tuple[str, Any], ...]:
    info = _cpuinfo()
    # x86 lists `flags`; aarch64 lists `Features` (and its Arm names join the isa map).
    arm = "flags" not in info and "Features" in info
    flags = set((info.get("flags") or info.get("Features") or "").split())
    isa = {flag: flag in flags for flag in ISA_FLAGS + (ARM_ISA_FLAGS if arm else ())}
    data = {
        "cpu_model": info.get("model name") or platform.processor() or platform.machine(),
        "arch": platform.machine(),
        "logical_cores": _usable_cores(),
        "os": f"{platform.system()} {platform.release()}",
        "isa": isa,
        "vnni": isa["avx512_vnni"] or isa["avx_vnni"],
        "memory_mb": _total_memory_mb(),
        "gpu": _gpu(),
    }
    return tuple(data.items())


def _usable_cores() -> int | None:
    """Cores this process may run on (CPU affinity, e.g. taskset or a container's cpuset)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # sched_getaffinity is Linux-only
        return os.cpu_count()


def _cpuinfo() -> dict[str, str]:
    """The first processor block of /proc/cpuinfo ({} off Linux)."""
    try:
        text = _CPUINFO.read_text()
    except OSError:
        return {}
    out: dict[str, str] = {}
    for line in text.splitlines():
        if not line.strip():
            if out:
                break
            continue
        key, _, value = line.partition(":")
        out.setdefault(key.strip(), value.strip())
    return out


def _total_memory_mb() -> int | None:
    try:
        for line in _MEMINFO.read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) // 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 1024**2
    except (ValueError, OSError, AttributeError):
        return None


def _gpu() -> dict[str, Any] | None:
    try:
        import torch
    except ImportError:
        return None
    if not torch.cuda.is_available():
        return None
    props = torch.cuda.get_device_properties(0)
    return {
        "name": props.name,
        "count": torch.cuda.device_count(),
        "compute_capability": f"{props.major}.{props.minor}",
        "memory_mb": props.total_memory // 1024**2,
        "driver": _nvidia_driver(),
        "cuda": torch.version.cuda,
    }


def _nvidia_driver() -> str | None:
    try:
        text = Path("/proc/driver/nvidia/version").read_text()
    except OSError:
        return None
    # "NVRM version: NVIDIA UNIX x86_64 Kernel Module  550.54.15  Tue Mar ..."
    for word in text.split():
        if word[:1].isdigit() and word.count(".") >= 1:
            return word
    return None


@functools.lru_cache(maxsize=1)
def _software() -> tuple[tuple[str, Any], ...]:
    data = {"python": platform.python_version()}
    for key, dist in (
        ("torch", "torch"),
        ("onnx", "onnx"),
        ("onnxruntime", ("onnxruntime", "onnxruntime-gpu")),
        ("tensorrt", ("tensorrt", "tensorrt-cu12", "tensorrt-cu11")),
        ("torchship", "torchship"),
    ):
        data[key] = _version(dist)
    return tuple(data.items())


def _version(dists: str | tuple[str, ...]) -> str | None:
    for dist in (dists,) if isinstance(dists, str) else dists:
        try:
            return importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
    return None
