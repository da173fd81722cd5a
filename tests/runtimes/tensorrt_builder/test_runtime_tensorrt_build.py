"""The TensorRT builder driven against the fake `tensorrt` of conftest.py: flags per precision
and release, strong typing, profiles, workspace, timing cache, log routing, error mapping.
"""

from __future__ import annotations

import logging

import pytest

from torchship.errors import BackendUnavailableError, ConfigError, ExportError
from torchship.runtimes.tensorrt.builder import EngineOptions, ShapeRange, profiles_for
from torchship.runtimes.tensorrt.cache import build_engine
from torchship.runtimes.tensorrt.compat import capabilities, routed_logger
from torchship.specs import InputSpec

SPEC = InputSpec(name="x", dtype="float32", shape=(2, 4), dynamic={0: "batch"})


def _config(trt):
    return trt.state.configs[-1]


def _flag_names(trt) -> set[str]:
    return {trt.BuilderFlag(f).name for f in _config(trt).flags}


# --- version capabilities ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("version", "explicit_batch", "typed", "precision_flags", "calibrators"),
    [
        ("8.6.1", True, False, True, ("entropy", "minmax")),
        ("10.3.0", False, True, True, ("entropy", "minmax")),
        ("11.0.0", False, True, False, ()),
    ],
)
def test_capabilities_follow_the_version(
    make_trt, version, explicit_batch, typed, precision_flags, calibrators
):
    caps = capabilities(make_trt(version))
    assert caps.needs_explicit_batch is explicit_batch
    assert caps.strongly_typed is typed
    assert caps.precision_flags is precision_flags
    assert caps.calibrators == calibrators


# --- flags per precision ----------------------------------------------------------------------


@pytest.mark.parametrize(("version", "network_flags"), [("8.6.1", 1 << 0), ("10.3.0", 0)])
def test_fp32_clears_tf32_and_sets_explicit_batch_only_on_8(
    fake_trt, fp32_onnx, version, network_flags
):
    trt = fake_trt(version)
    build = build_engine(fp32_onnx, options=EngineOptions(precision="fp32"))
    assert trt.state.network.flags == network_flags
    assert _flag_names(trt) == set()
    assert build.info.mode == "fp32" and not build.info.strongly_typed


def test_fp16_sets_the_fp16_flag(fake_trt, fp32_onnx):
    trt = fake_trt("10.3.0")
    build = build_engine(fp32_onnx, options=EngineOptions(precision="fp16"))
    assert _flag_names(trt) == {"FP16", "TF32"}
    assert trt.state.network.flags == 0
    assert build.info.precision == "fp16"


def test_fp16_on_11_needs_an_fp16_onnx(fake_trt, fp32_onnx, fp16_onnx):
    trt = fake_trt("11.0.0")
    with pytest.raises(ConfigError, match="TensorRT 11.0.0 has no FP16 builder flag"):
        build_engine(fp32_onnx, options=EngineOptions(precision="fp16"))
    build = build_engine(fp16_onnx, options=EngineOptions(precision="fp16"))
    assert trt.state.network.flags == 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    assert build.info.mode == "fp16-strongly-typed"


def test_int8_qdq_is_strongly_typed_on_10(fake_trt, qdq_onnx):
    trt = fake_trt("10.3.0")
    build = build_engine(qdq_onnx, options=EngineOptions(precision="int8"))
    assert trt.state.network.flags == 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    assert "INT8" not in _flag_names(trt)
    assert build.info.strongly_typed and build.info.mode == "int8-explicit-qdq"


def test_int8_qdq_on_8_6_uses_the_int8_flag(fake_trt, qdq_onnx):
    trt = fake_trt("8.6.1")
    build_engine(qdq_onnx, options=EngineOptions(precision="int8"))
    assert trt.state.network.flags == 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    assert "INT8" in _flag_names(trt)


def test_int8_without_qdq_nodes_is_refused(fake_trt, fp32_onnx):
    fake_trt("10.3.0")
    with pytest.raises(ConfigError, match="no QuantizeLinear/DequantizeLinear nodes"):
        build_engine(fp32_onnx, options=EngineOptions(precision="int8"))


# --- profiles, workspace, timing cache, logging -----------------------------------------------


def test_profile_covers_the_dynamic_batch(fake_trt, fp32_onnx):
    trt = fake_trt()
    build_engine(fp32_onnx)
    (profile,) = _config(trt).profiles
    assert profile.shapes == {"x": ((1, 4), (2, 4), (32, 4))}


def test_profile_from_flags(fake_trt, fp32_onnx):
    trt = fake_trt()
    wanted = ShapeRange("x", (1, 4), (8, 4), (64, 4))
    build = build_engine(fp32_onnx, options=EngineOptions(profiles=(wanted,)))
    assert _config(trt).profiles[0].shapes["x"] == ((1, 4), (8, 4), (64, 4))
    assert build.info.profiles == (wanted,)


def test_profile_must_keep_fixed_dims(fake_trt, fp32_onnx):
    fake_trt()
    bad = ShapeRange("x", (1, 4), (2, 8), (4, 8))
    with pytest.raises(ConfigError, match="axis 1 is fixed at 4 in the network"):
        build_engine(fp32_onnx, options=EngineOptions(profiles=(bad,)))


@pytest.mark.parametrize(
    ("ranges", "match"),
    [
        ((ShapeRange("z", (1,), (1,), (1,)),), r"profile shapes given for \['z'\]"),
        ((ShapeRange("x", (1, 4, 1), (1, 4, 1), (1, 4, 1)),), "3-d shapes for a 2-d input"),
    ],
)
def test_profiles_are_checked_against_the_specs(ranges, match):
    with pytest.raises(ConfigError, match=match):
        profiles_for([SPEC], ranges)


def test_shape_range_order_is_checked():
    with pytest.raises(ConfigError, match="need 1 <= min <= opt <= max"):
        ShapeRange("x", (4, 4), (2, 4), (8, 4))


def test_workspace_limit(fake_trt, fp32_onnx):
    trt = fake_trt()
    build_engine(fp32_onnx, options=EngineOptions(workspace_mb=256))
    assert _config(trt).pools == {trt.MemoryPoolType.WORKSPACE: 256 << 20}


def test_timing_cache_is_reused_across_builds(fake_trt, fp32_onnx, qdq_onnx, tmp_path):
    trt = fake_trt()
    path = tmp_path / "timing.cache"
    build_engine(fp32_onnx, options=EngineOptions(timing_cache=path))
    assert _config(trt).timing_cache_seen == [b""]
    assert path.read_bytes() == b"+tactics"
    build_engine(qdq_onnx, options=EngineOptions(precision="int8", timing_cache=path))
    assert _config(trt).timing_cache_seen == [b"+tactics"]
    assert path.read_bytes() == b"+tactics+tactics"


def test_default_timing_cache_lives_in_the_cache_dir(fake_trt, fp32_onnx, tmp_path):
    fake_trt()
    build_engine(fp32_onnx)
    (cache,) = (tmp_path / "cache" / "tensorrt").glob("timing-*.cache")
    assert "sm8.9" in cache.name and "trt10.3.0" in cache.name


def test_builder_log_goes_to_logging(fake_trt, fp32_onnx, caplog):
    fake_trt()
    with caplog.at_level(logging.WARNING, logger="torchship.runtimes.tensorrt.builder"):
        build_engine(fp32_onnx)
    assert "TensorRT: fake builder warning" in caplog.text


def test_routed_logger_maps_severities(make_trt, caplog):
    trt = make_trt("10.3.0")
    severity = trt.ILogger.Severity
    logger = routed_logger(trt, name="trt-test")
    with caplog.at_level(logging.DEBUG, logger="trt-test"):
        logger.log(severity.ERROR, "bad")
        logger.log(severity.VERBOSE, "chatty")
    levels = {r.getMessage(): r.levelno for r in caplog.records}
    assert levels == {"TensorRT: bad": logging.ERROR, "TensorRT: chatty": logging.DEBUG}
    assert logger.errors == ["bad"]


# --- errors -----------------------------------------------------------------------------------


def test_parser_error_names_the_node_on_10(fake_trt, fp32_onnx):
    trt = fake_trt("10.3.0")
    trt.state.parse_errors = [
        trt.make_error("unsupported operator", 0, "relu_0", "Relu"),
        trt.make_error("second", 0),
    ]
    with pytest.raises(
        ExportError, match=r"cannot parse node 'relu_0' \(Relu\): unsupported .*1 more"
    ):
        build_engine(fp32_onnx)


def test_parser_error_on_8_6_looks_the_node_up_by_index(fake_trt, qdq_onnx):
    trt = fake_trt("8.6.1")
    trt.state.parse_errors = [trt.make_error("bad scale", 1)]
    with pytest.raises(ExportError, match=r"node 'dq_0' \(DequantizeLinear\): bad scale"):
        build_engine(qdq_onnx, options=EngineOptions(precision="int8"))


def test_failed_build_reports_the_builder_error(fake_trt, fp32_onnx):
    trt = fake_trt()
    trt.state.fail_build = True
    with pytest.raises(ExportError, match="could not build a fp32 engine .*out of device memory"):
        build_engine(fp32_onnx)


def test_too_old_tensorrt_is_unavailable(fake_trt, fp32_onnx):
    fake_trt("8.4.3")
    with pytest.raises(BackendUnavailableError, match="TensorRT 8.4.3 is too old"):
        build_engine(fp32_onnx)
