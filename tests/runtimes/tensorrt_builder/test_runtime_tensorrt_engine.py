"""Engine cache, implicit calibrators, compatibility checks, engine files and `build-engine`,
driven against the fake `tensorrt` of conftest.py.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import types
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx
import pytest

from torchship.artifact import Artifact, Format, Precision
from torchship.cli.main import main
from torchship.errors import BackendUnavailableError, CalibrationError, ConfigError, ExportError
from torchship.exporter.engines import build_engine_file, engine_output_path
from torchship.runtimes.tensorrt import cache as tensorrt_engine
from torchship.runtimes.tensorrt.builder import EngineOptions, ShapeRange
from torchship.runtimes.tensorrt.cache import (
    EngineCache,
    EngineInfo,
    GpuIdentity,
    build_engine,
    check_compatible,
    read_engine_info,
)
from torchship.specs import InputSpec

GPU = GpuIdentity("NVIDIA Fake 4090", "8.9")  # what conftest's fake reports


def _config(trt):
    return trt.state.configs[-1]


def _flag_names(trt) -> set[str]:
    return {trt.BuilderFlag(f).name for f in _config(trt).flags}


# --- the engine cache -------------------------------------------------------------------------


def test_cache_hit_skips_the_builder(fake_trt, fp32_onnx):
    trt = fake_trt()
    first = build_engine(fp32_onnx)
    second = build_engine(fp32_onnx)
    assert (first.cached, second.cached, trt.state.builds) == (False, True, 1)
    assert second.plan == first.plan and second.info == first.info


@pytest.mark.parametrize(
    "options",
    [
        EngineOptions(precision="fp16"),
        EngineOptions(profiles=(ShapeRange("x", (1, 4), (4, 4), (8, 4)),)),
        EngineOptions(use_cache=False),
    ],
    ids=["precision", "profiles", "no-cache"],
)
def test_cache_misses_when_the_engine_would_differ(fake_trt, fp32_onnx, options):
    trt = fake_trt()
    build_engine(fp32_onnx)
    assert build_engine(fp32_onnx, options=options).cached is False
    assert trt.state.builds == 2


def test_cache_key_includes_gpu_and_version(fake_trt, fp32_onnx, monkeypatch):
    trt = fake_trt("10.3.0")
    build_engine(fp32_onnx)
    monkeypatch.setattr(tensorrt_engine, "gpu_identity", lambda: GpuIdentity("H100", "9.0"))
    assert build_engine(fp32_onnx).cached is False
    trt = fake_trt("10.4.0")
    assert build_engine(fp32_onnx).cached is False and trt.state.builds == 1


def test_damaged_cache_entry_is_rebuilt(fake_trt, fp32_onnx):
    trt = fake_trt()
    key = build_engine(fp32_onnx).info.cache_key
    (EngineCache().dir / f"{key}.json").write_text("{not json")
    assert build_engine(fp32_onnx).cached is False and trt.state.builds == 2


# --- implicit calibrators ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "cls"), [("entropy", "IInt8EntropyCalibrator2"), ("minmax", "IInt8MinMaxCalibrator")]
)
def test_calibrator_is_driven_and_caches(fake_trt, fp32_onnx, calib_npz, method, cls):
    trt = fake_trt("10.0.1")
    options = EngineOptions(precision="int8", calibrator=method, calib_data=str(calib_npz))
    build = build_engine(fp32_onnx, options=options)
    config = _config(trt)
    assert isinstance(config.int8_calibrator, getattr(trt, cls))
    assert "INT8" in _flag_names(trt) and trt.state.network.flags == 0
    assert config.calibration_profile.shapes == {"x": ((8, 4), (8, 4), (8, 4))}
    assert build.info.calibration["batches_fed"] == 2  # 20 samples: two full batches of 8
    again = build_engine(fp32_onnx, options=replace(options, use_cache=False))
    assert again.info.calibration["batches_fed"] == 0  # TensorRT reused the calibration cache


def test_calibrators_warn_as_deprecated_from_10_1(fake_trt, fp32_onnx, calib_npz, caplog):
    fake_trt("10.5.0")
    options = EngineOptions(precision="int8", calibrator="entropy", calib_data=str(calib_npz))
    with caplog.at_level(logging.WARNING):
        build_engine(fp32_onnx, options=options)
    assert "deprecates implicit calibration" in caplog.text


def test_calibrators_are_gone_in_11(fake_trt, fp32_onnx, calib_npz):
    fake_trt("11.0.0")
    options = EngineOptions(precision="int8", calibrator="minmax", calib_data=str(calib_npz))
    with pytest.raises(BackendUnavailableError, match="TensorRT 11.0.0 has no implicit INT8"):
        build_engine(fp32_onnx, options=options)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (
            {"precision": "fp16", "calibrator": "entropy", "calib_data": "d.npz"},
            "is for --precision int8",
        ),
        ({"precision": "int8", "calibrator": "entropy"}, "--calibrator and --calib go together"),
        (
            {"precision": "int8", "calibrator": "kl", "calib_data": "d.npz"},
            "unknown; valid: entropy, minmax",
        ),
        ({"workspace_mb": 0}, "--workspace 0: must be >= 1"),
    ],
)
def test_engine_options_are_validated(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        EngineOptions(**kwargs)


# --- compatibility ----------------------------------------------------------------------------


def _info(**changes) -> EngineInfo:
    base = dict(
        tensorrt_version="10.3.0", gpu_name=GPU.name, compute_capability="8.9",
        precision="fp16", mode="fp16", strongly_typed=False,
        profiles=(ShapeRange("x", (1, 4), (2, 4), (32, 4)),), onnx_file="m.onnx", onnx_sha256="ab",
    )  # fmt: skip
    return EngineInfo(**{**base, **changes})


@pytest.mark.parametrize(
    ("info", "match"),
    [
        (_info(tensorrt_version="8.6.1"), r"built for TensorRT 8.6.1 \(here: 10.3.0\)"),
        (_info(compute_capability="8.0", gpu_name="A100"), r"A100 with compute capability 8.0"),
    ],
)
def test_mismatching_engine_is_unavailable(info, match):
    with pytest.raises(
        BackendUnavailableError, match=match + ".*not portable.*build-engine m.onnx"
    ):
        check_compatible(info, path=Path("m.engine"), trt_version="10.3.0", gpu=GPU)


def test_hardware_compatible_engine_runs_on_newer_gpus(caplog):
    info = _info(compute_capability="8.6", gpu_name="A10", hardware_compat=True)
    check_compatible(
        info, path=Path("m.engine"), trt_version="10.3", gpu=GpuIdentity("H100", "9.0")
    )
    with pytest.raises(BackendUnavailableError, match="Ampere or newer"):
        check_compatible(
            info, path=Path("m.engine"), trt_version="10.3", gpu=GpuIdentity("T4", "7.5")
        )


def test_same_architecture_other_gpu_only_warns(caplog):
    with caplog.at_level(logging.WARNING):
        check_compatible(
            _info(), path=Path("m.engine"), trt_version="10.3.0", gpu=GpuIdentity("L4", "8.9")
        )
    assert "may be slower" in caplog.text


def test_engine_info_round_trips():
    info = _info(calibration={"method": "entropy"})
    assert EngineInfo.from_dict(json.loads(json.dumps(info.to_dict()))) == info
    with pytest.raises(ConfigError, match="malformed"):
        EngineInfo.from_dict({"precision": "fp16"})


# --- engine files and manifests ---------------------------------------------------------------


def test_engine_file_and_manifest(fake_trt, fp32_onnx, tmp_path):
    fake_trt()
    result = build_engine_file(fp32_onnx.path, out=tmp_path / "out", parity=False)
    engine = tmp_path / "out" / "fp32.fp32.engine"
    assert result.artifact.path == engine and engine.is_file()
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert [f["path"] for f in manifest["files"]] == ["fp32.fp32.engine"]
    opened = Artifact.open(engine)
    assert opened.format is Format.TENSORRT_ENGINE
    assert [(s.name, s.dynamic) for s in opened.inputs] == [("x", {0: "batch"})]
    info = read_engine_info(opened)
    assert (info.gpu_name, info.compute_capability, info.tensorrt_version) == (
        GPU.name,
        "8.9",
        "10.3.0",
    )
    assert info.onnx_sha256 == fp32_onnx.sha256 and info.profiles[0].max == (32, 4)


def test_engine_joins_an_existing_manifest(fake_trt, fp32_onnx, tmp_path):
    fake_trt()
    first = build_engine_file(fp32_onnx.path, parity=False)
    build_engine_file(fp32_onnx.path, options=EngineOptions(precision="fp16"), parity=False)
    manifest = json.loads(first.manifest_path.read_text())
    assert sorted(a["path"] for a in manifest["artifacts"]) == [
        "fp32.fp16.engine",
        "fp32.fp32.engine",
    ]
    assert Artifact.open(tmp_path / "fp32.fp16.engine").precision is Precision.FP16


def test_foreign_manifest_is_not_overwritten(fake_trt, fp32_onnx, tmp_path):
    fake_trt()
    (tmp_path / "manifest.json").write_text('{"other": "tool"}')
    with pytest.raises(ConfigError, match="is not a torchship manifest"):
        build_engine_file(fp32_onnx.path, parity=False)
    assert json.loads((tmp_path / "manifest.json").read_text()) == {"other": "tool"}


def test_failed_build_leaves_no_file(fake_trt, fp32_onnx, tmp_path):
    trt = fake_trt()
    trt.state.fail_build = True
    with pytest.raises(ExportError):
        build_engine_file(fp32_onnx.path, out=tmp_path / "out.engine", parity=False)
    assert not any(tmp_path.glob("*.engine")) and not any(tmp_path.glob(".*engine*"))


# --- the command line -------------------------------------------------------------------------


def test_cli_builds_an_engine(fake_trt, fp32_onnx, tmp_path, capsys):
    fake_trt()
    out = tmp_path / "m.plan"
    argv = ["build-engine", str(fp32_onnx.path), "--precision", "fp16", "--workspace", "64"]
    argv += ["--min", "x:1x4", "--opt", "x:4x4", "--max", "x:16x4", "--no-parity", "-o", str(out)]
    assert main([*argv, "--json", "-"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert record["tensorrt"]["profiles"][0]["opt"] == [4, 4] and out.is_file()
    assert main(argv) == 0
    assert "engine cache" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("extra", "match"),
    [
        (["--precision", "fp64"], "--precision 'fp64': valid: fp32, fp16, int8"),
        (["--min", "x:1x4"], "input 'x': profile shapes need --opt, --max as well"),
        (
            ["--min", "x:1by4", "--opt", "x:1x4", "--max", "x:1x4"],
            "--min 'x:1by4': expected NAME:SHAPE",
        ),
        (["--precision", "int8"], "no QuantizeLinear/DequantizeLinear nodes"),
    ],
)
def test_cli_bad_input_exits_2(fake_trt, fp32_onnx, capsys, extra, match):
    fake_trt()
    assert main(["build-engine", str(fp32_onnx.path), *extra]) == 2
    assert match in " ".join(capsys.readouterr().err.split())


@pytest.mark.skipif(importlib.util.find_spec("tensorrt") is not None, reason="tensorrt is here")
def test_cli_without_tensorrt_exits_3(fp32_onnx, capsys):
    assert main(["build-engine", str(fp32_onnx.path), "--no-parity"]) == 3
    assert "tensorrt package is not installed" in capsys.readouterr().err


@pytest.mark.parametrize(("version", "uploaded"), [("8.6.1", np.int32), ("10.0.1", np.int64)])
def test_calibration_batches_take_the_network_input_dtype(
    fake_trt, monkeypatch, tmp_path, version, uploaded
):
    from onnx import TensorProto, helper

    fake_trt(version)
    ids = helper.make_tensor_value_info("ids", TensorProto.INT64, ["batch", 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])
    cast = helper.make_node("Cast", ["ids"], ["y"], to=TensorProto.FLOAT, name="cast_0")
    path = tmp_path / "ids.onnx"
    onnx.save(helper.make_model(helper.make_graph([cast], "g", [ids], [y])), str(path))
    spec = InputSpec(name="ids", dtype="int64", shape=(2, 4), dynamic={0: "batch"})
    artifact = Artifact.create(path, format=Format.ONNX, inputs=[spec], outputs=["y"])
    data = tmp_path / "ids.npz"
    np.savez(data, ids=np.arange(64, dtype=np.int64).reshape(16, 4))
    seen = []

    def upload(array):
        seen.append(array)
        return types.SimpleNamespace(data_ptr=lambda: id(array))

    monkeypatch.setattr("torchship.runtimes.tensorrt.calibrator._cuda_upload", upload)
    options = EngineOptions(precision="int8", calibrator="entropy", calib_data=str(data))
    build_engine(artifact, options=options)
    assert len(seen) == 2 and {a.dtype for a in seen} == {np.dtype(uploaded)}
    np.testing.assert_array_equal(seen[0], np.arange(32).reshape(8, 4))


def test_too_old_tensorrt_is_unavailable(fake_trt):
    from torchship.runtimes.tensorrt.runner import TensorRTRunner

    fake_trt("8.5.3")
    assert "TensorRT 8.5.3 is too old" in TensorRTRunner.unavailable_reason()


def test_too_little_calibration_data(fake_trt, fp32_onnx, tmp_path):
    fake_trt("10.0.1")
    path = tmp_path / "small.npz"
    np.savez(path, x=np.zeros((3, 4), np.float32))
    options = EngineOptions(precision="int8", calibrator="entropy", calib_data=str(path))
    with pytest.raises(CalibrationError, match="fewer than 8 samples"):
        build_engine(fp32_onnx, options=options)


@pytest.mark.parametrize(
    ("out", "expected"),
    [(None, "m.fp16.engine"), ("dir", "dir/m.fp16.engine"), ("x.plan", "x.plan")],
)
def test_engine_output_path(tmp_path, out, expected):
    given = None if out is None else tmp_path / out
    assert engine_output_path(tmp_path / "m.onnx", given, Precision.FP16) == tmp_path / expected


def test_runner_checks_the_manifest_before_tensorrt_loads(fake_trt, fp32_onnx, tmp_path):
    from torchship.runtimes.tensorrt.runner import TensorRTRunner

    fake_trt("10.3.0")
    result = build_engine_file(fp32_onnx.path, parity=False)
    manifest = json.loads(result.manifest_path.read_text())
    manifest["artifacts"][0]["details"]["tensorrt"]["tensorrt_version"] = "8.6.1"
    result.manifest_path.write_text(json.dumps(manifest))
    runner = TensorRTRunner(Artifact.open(result.artifact.path))
    with pytest.raises(BackendUnavailableError, match=r"built for TensorRT 8.6.1 \(here: 10.3.0\)"):
        runner._plan("10.3.0")


def test_runner_needs_a_gpu_even_with_tensorrt(fake_trt, fp32_onnx):
    import torch

    from torchship.runtimes.tensorrt.runner import TensorRTRunner

    if torch.cuda.is_available():
        pytest.skip("a GPU is here")
    fake_trt()
    with pytest.raises(BackendUnavailableError, match="runtime 'tensorrt' is not available: torch"):
        TensorRTRunner(fp32_onnx).load()
