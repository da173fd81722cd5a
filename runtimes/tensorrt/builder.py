"""Drive the TensorRT builder: ONNX -> serialized engine (plan) for one precision.

How each precision is built (see `tensorrt_compat` for the version facts):
- fp32: weakly typed with TF32 switched off, so results match the ONNX reference.
- fp16: BuilderFlag.FP16 where it exists (< 11); on 11+ the network is strongly typed and the
  ONNX itself must carry fp16 types.
- int8, default: the explicit Q/DQ ONNX (`tensorrt` quantization preset) built as a strongly
  typed network (9+), or with BuilderFlag.INT8 on 8.6, which has no strong typing.
- int8 with a calibrator (`entropy`/`minmax`, TensorRT < 11 only): an fp32 ONNX calibrated by
  TensorRT itself, with a calibration cache that later builds reuse.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from torchship.artifact import Precision
from torchship.errors import BackendUnavailableError, ConfigError, ExportError
from torchship.files import atomic_path
from torchship.runtimes.tensorrt.compat import CALIBRATOR_CLASSES, TrtCapabilities, routed_logger
from torchship.specs import InputSpec

__all__ = [
    "DYNAMIC_MAX_FACTOR",
    "DYNAMIC_MAX_FLOOR",
    "ShapeRange",
    "EngineOptions",
    "BuildPlan",
    "profile_shapes",
    "profiles_for",
    "build_mode",
    "build_serialized",
    "network_input_dtypes",
]

log = logging.getLogger(__name__)

#: By default a dynamic axis spans 1 .. max(this many times the example size, DYNAMIC_MAX_FLOOR).
DYNAMIC_MAX_FACTOR = 4
DYNAMIC_MAX_FLOOR = 32
_QDQ_OPS = {"QuantizeLinear", "DequantizeLinear"}


@dataclass(frozen=True)
class ShapeRange:
    """One input's optimization-profile shapes."""

    name: str
    min: tuple[int, ...]
    opt: tuple[int, ...]
    max: tuple[int, ...]

    def __post_init__(self) -> None:
        ranks = {len(self.min), len(self.opt), len(self.max)}
        if len(ranks) != 1:
            raise ConfigError(
                f"profile for {self.name!r}: min {list(self.min)}, opt {list(self.opt)} and "
                f"max {list(self.max)} must have the same rank"
            )
        for lo, mid, hi in zip(self.min, self.opt, self.max, strict=True):
            if not 1 <= lo <= mid <= hi:
                raise ConfigError(
                    f"profile for {self.name!r}: need 1 <= min <= opt <= max on every axis, got "
                    f"min {list(self.min)}, opt {list(self.opt)}, max {list(self.max)}"
                )

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "min": list(self.min),
            "opt": list(self.opt),
            "max": list(self.max),
        }

    @classmethod
    def from_dict(cls, data: Mapping) -> ShapeRange:
        return cls(data["name"], *(tuple(int(d) for d in data[k]) for k in ("min", "opt", "max")))


@dataclass(frozen=True)
class EngineOptions:
    """How to build one engine. None means the default.

    `profiles`: one ShapeRange per input (default: from the InputSpecs, see `profile_shapes`).
    `calibrator`/`calib_data`: implicit INT8 calibration instead of explicit Q/DQ.
    `timing_cache`: the timing-cache file reused across builds (default: in the engine cache).
    """

    precision: Precision = Precision.FP32
    workspace_mb: int | None = None
    profiles: tuple[ShapeRange, ...] | None = None
    calibrator: str | None = None
    calib_data: str | None = None
    calib_samples: int | None = None
    calib_batch: int | None = None
    timing_cache: Path | None = None
    hardware_compat: bool = False
    use_cache: bool = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "precision", Precision(self.precision))
        if self.workspace_mb is not None and self.workspace_mb < 1:
            raise ConfigError(f"--workspace {self.workspace_mb}: must be >= 1 (MiB)")
        if self.calibrator is not None and self.precision is not Precision.INT8:
            raise ConfigError(
                f"--calibrator {self.calibrator}: calibration is for --precision int8, "
                f"not {self.precision.value}"
            )
        if (self.calibrator is None) != (self.calib_data is None):
            raise ConfigError("--calibrator and --calib go together: give both or neither")
        if self.calibrator is not None and self.calibrator not in CALIBRATOR_CLASSES:
            valid = ", ".join(sorted(CALIBRATOR_CLASSES))
            raise ConfigError(f"--calibrator {self.calibrator!r}: unknown; valid: {valid}")


@dataclass(frozen=True)
class BuildPlan:
    """What `build_serialized` decided: network flags and builder flags, for manifests/tests."""

    mode: str
    strongly_typed: bool
    builder_flags: tuple[str, ...]


def profile_shapes(
    shape: tuple[int, ...], dynamic: Mapping[int, str]
) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]:
    """(min, opt, max): dynamic axes span 1 .. max(4x the example, 32); opt is the example."""
    low = tuple(1 if i in dynamic else d for i, d in enumerate(shape))
    high = tuple(
        max(max(d, 1) * DYNAMIC_MAX_FACTOR, DYNAMIC_MAX_FLOOR) if i in dynamic else d
        for i, d in enumerate(shape)
    )
    opt = tuple(max(d, 1) for d in shape)
    return low, opt, high


def profiles_for(
    specs: Sequence[InputSpec], overrides: Sequence[ShapeRange] | None = None
) -> tuple[ShapeRange, ...]:
    """One ShapeRange per input: `overrides` where given, else derived from the spec."""
    given = {r.name: r for r in overrides or ()}
    names = {s.name for s in specs}
    unknown = sorted(set(given) - names)
    if unknown:
        raise ConfigError(
            f"profile shapes given for {unknown}, which the model does not take; "
            f"inputs: {sorted(names)}"
        )
    ranges = []
    for spec in specs:
        r = given.get(spec.name) or ShapeRange(spec.name, *profile_shapes(spec.shape, spec.dynamic))
        if len(r.opt) != len(spec.shape):
            raise ConfigError(
                f"profile for {spec.name!r}: {len(r.opt)}-d shapes for a {len(spec.shape)}-d input"
            )
        ranges.append(r)
    return tuple(ranges)


def build_mode(options: EngineOptions, caps: TrtCapabilities, *, onnx_path: Path) -> BuildPlan:
    """Decide strong typing and builder flags for `options` on this TensorRT."""
    precision = options.precision
    if options.calibrator is not None:
        _require_calibrator(options.calibrator, caps)
        return BuildPlan(f"int8-calibrated-{options.calibrator}", False, ("INT8",))
    if precision is Precision.INT8:
        _require_qdq(onnx_path)
        if caps.strongly_typed:
            return BuildPlan("int8-explicit-qdq", True, ())
        return BuildPlan("int8-explicit-qdq", False, ("INT8",))
    if precision is Precision.FP16:
        if caps.precision_flags:
            return BuildPlan("fp16", False, ("FP16",))
        _require_fp16_onnx(onnx_path, caps)
        return BuildPlan("fp16-strongly-typed", True, ())
    if not caps.precision_flags and caps.strongly_typed:
        return BuildPlan("fp32-strongly-typed", True, ())
    return BuildPlan("fp32", False, ())


def build_serialized(
    trt: Any,
    caps: TrtCapabilities,
    onnx_path: Path,
    *,
    profiles: Sequence[ShapeRange],
    options: EngineOptions,
    timing_cache: Path | None,
    calibrator: Any = None,
) -> tuple[bytes, BuildPlan]:
    """Parse `onnx_path` and build a serialized engine; ExportError naming the failing node."""
    plan = build_mode(options, caps, onnx_path=onnx_path)
    logger = routed_logger(trt, name=__name__)
    builder = trt.Builder(logger)
    network = builder.create_network(_network_flags(trt, caps, plan))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        raise ExportError(parse_error_message(parser, onnx_path))
    config = builder.create_builder_config()
    _set_precision(trt, config, plan, options)
    if options.workspace_mb is not None:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, options.workspace_mb << 20)
    if options.hardware_compat:
        _set_hardware_compat(trt, config, caps)
    _add_profile(builder, config, network, profiles)
    if calibrator is not None:
        calibrator.input_dtypes = network_input_dtypes(trt, network)
        _set_calibrator(builder, config, calibrator)
    cache = _load_timing_cache(config, timing_cache)
    started = time.perf_counter()
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        detail = "; ".join(logger.errors[-3:]) or "no error message from TensorRT"
        raise ExportError(f"{onnx_path}: TensorRT could not build a {plan.mode} engine ({detail})")
    log.info("tensorrt: built %s as %s in %.1f s", onnx_path.name, plan.mode, _since(started))
    if cache is not None and timing_cache is not None:
        _save_timing_cache(config, timing_cache)
    return bytes(memoryview(serialized)), plan


def parse_error_message(parser: Any, onnx_path: Path) -> str:
    """One line: the first parser error with the ONNX node name, operator and message."""
    count = int(parser.num_errors)
    if count == 0:
        return f"{onnx_path}: TensorRT's ONNX parser failed without an error message"
    nodes = _onnx_nodes(onnx_path)
    first = parser.get_error(0)
    where = _node_label(first, nodes)
    more = f" (+{count - 1} more)" if count > 1 else ""
    return f"{onnx_path}: TensorRT cannot parse node {where}: {first.desc()}{more}"


def _node_label(error: Any, nodes: Sequence[onnx.NodeProto]) -> str:
    # 10.x errors carry the node's name and operator; 8.6 only its index in the graph.
    name = error.node_name() if hasattr(error, "node_name") else ""
    op = error.node_operator() if hasattr(error, "node_operator") else ""
    index = int(error.node()) if hasattr(error, "node") else -1
    if not name and 0 <= index < len(nodes):
        name, op = nodes[index].name or f"#{index}", op or nodes[index].op_type
    if not name:
        return "(graph level)" if index < 0 else f"#{index}"
    return f"{name!r} ({op})" if op else repr(name)


def _onnx_nodes(path: Path) -> list[onnx.NodeProto]:
    try:
        return list(onnx.load(str(path), load_external_data=False).graph.node)
    except Exception:  # the parser already said what is wrong with the file
        return []


def _network_flags(trt: Any, caps: TrtCapabilities, plan: BuildPlan) -> int:
    creation = trt.NetworkDefinitionCreationFlag
    flags = 0
    if caps.needs_explicit_batch:
        flags |= 1 << int(creation.EXPLICIT_BATCH)
    if plan.strongly_typed:
        flags |= 1 << int(creation.STRONGLY_TYPED)
    return flags


def _set_precision(trt: Any, config: Any, plan: BuildPlan, options: EngineOptions) -> None:
    for name in plan.builder_flags:
        config.set_flag(getattr(trt.BuilderFlag, name))
    tf32 = getattr(trt.BuilderFlag, "TF32", None)
    if options.precision is Precision.FP32 and tf32 is not None:
        config.clear_flag(tf32)  # TF32 convs/matmuls would miss the fp32 parity tolerance


def _set_hardware_compat(trt: Any, config: Any, caps: TrtCapabilities) -> None:
    if not caps.hardware_compat:
        raise BackendUnavailableError(
            f"TensorRT {caps.version} cannot build hardware-compatible engines (needs >= 8.6)"
        )
    config.hardware_compatibility_level = trt.HardwareCompatibilityLevel.AMPERE_PLUS


def _add_profile(builder: Any, config: Any, network: Any, profiles: Sequence[ShapeRange]) -> Any:
    """One optimization profile covering every network input; every dynamic dim is bounded."""
    by_name = {r.name: r for r in profiles}
    profile = builder.create_optimization_profile()
    for i in range(network.num_inputs):
        tensor = network.get_input(i)
        shape = tuple(int(d) for d in tensor.shape)
        r = by_name.get(tensor.name)
        if r is None:
            raise ConfigError(
                f"network input {tensor.name!r} has no profile shapes; "
                f"inputs described: {sorted(by_name)}"
            )
        _check_range_fits(r, shape)
        profile.set_shape(tensor.name, r.min, r.opt, r.max)
    config.add_optimization_profile(profile)
    return profile


def _set_calibrator(builder: Any, config: Any, calibrator: Any) -> None:
    # TensorRT calibrates at the calibration profile's opt shapes: pin them to the batch shapes.
    profile = builder.create_optimization_profile()
    for name, shape in calibrator.input_shapes.items():
        profile.set_shape(name, shape, shape, shape)
    config.int8_calibrator = calibrator
    config.set_calibration_profile(profile)


def network_input_dtypes(trt: Any, network: Any) -> dict[str, np.dtype]:
    """The numpy dtype of each parsed network input (8.6 turns int64 ONNX inputs into int32)."""
    dtypes = {}
    for i in range(network.num_inputs):
        tensor = network.get_input(i)
        try:
            dtypes[tensor.name] = np.dtype(trt.nptype(tensor.dtype))
        except TypeError:  # no numpy equivalent (bf16, fp8): leave the data as it is
            continue
    return dtypes


def _check_range_fits(r: ShapeRange, network_shape: tuple[int, ...]) -> None:
    if len(network_shape) != len(r.opt):
        raise ConfigError(
            f"profile for {r.name!r}: {len(r.opt)}-d shapes, the network input is "
            f"{len(network_shape)}-d {list(network_shape)}"
        )
    for axis, dim in enumerate(network_shape):
        if dim >= 0 and not r.min[axis] == r.opt[axis] == r.max[axis] == dim:
            raise ConfigError(
                f"profile for {r.name!r}: axis {axis} is fixed at {dim} in the network, the "
                f"profile gives min {r.min[axis]} opt {r.opt[axis]} max {r.max[axis]}"
            )


def _load_timing_cache(config: Any, path: Path | None) -> Any:
    if path is None:
        return None
    data = path.read_bytes() if path.is_file() else b""
    cache = config.create_timing_cache(data)
    if not config.set_timing_cache(cache, False):
        log.warning("tensorrt: timing cache %s does not fit this build; starting a new one", path)
        cache = config.create_timing_cache(b"")
        config.set_timing_cache(cache, True)
    else:
        log.debug("tensorrt: timing cache %s (%d bytes) in use", path, len(data))
    return cache


def _save_timing_cache(config: Any, path: Path) -> None:
    data = bytes(memoryview(config.get_timing_cache().serialize()))
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def _require_calibrator(name: str, caps: TrtCapabilities) -> None:
    if name not in caps.calibrators or not caps.precision_flags:
        raise BackendUnavailableError(
            f"TensorRT {caps.version} has no implicit INT8 calibrators (removed in 11.0, "
            "deprecated since 10.1): build the `tensorrt`-preset Q/DQ ONNX instead "
            "(torchship quantize MODEL.onnx --target tensorrt) and drop --calibrator"
        )
    if caps.calibrators_deprecated:
        log.warning("TensorRT %s deprecates implicit calibration; prefer Q/DQ ONNX", caps.version)


def _require_qdq(onnx_path: Path) -> None:
    model = onnx.load(str(onnx_path), load_external_data=False)
    if not any(node.op_type in _QDQ_OPS for node in model.graph.node):
        raise ConfigError(
            f"{onnx_path}: no QuantizeLinear/DequantizeLinear nodes, so an INT8 engine would "
            "silently run in fp32; quantize it first (torchship quantize MODEL.onnx --target "
            "tensorrt) or calibrate with --calibrator entropy|minmax --calib DATA"
        )


def _require_fp16_onnx(onnx_path: Path, caps: TrtCapabilities) -> None:
    model = onnx.load(str(onnx_path), load_external_data=False)
    fp16 = onnx.TensorProto.FLOAT16
    if not any(t.data_type == fp16 for t in model.graph.initializer):
        raise ConfigError(
            f"{onnx_path}: TensorRT {caps.version} has no FP16 builder flag (every network is "
            "strongly typed); convert the ONNX to fp16 first (torchship quantize MODEL.onnx "
            "--precision fp16) and build that"
        )


def _since(started: float) -> float:
    return time.perf_counter() - started
