"""The compiled and lowered formats: AOTInductor packages and ExecuTorch programs.

Building them takes up to a minute (AOTInductor compiles C++), so the tiny artifacts are built
once per session (`tiny_built` in tests/conftest.py) and reused here and by the runner contract.
"""

from __future__ import annotations

import zipfile

import numpy as np
import pytest

from torchship.artifact import Artifact, Format, format_for_path
from torchship.errors import BackendUnavailableError, ConfigError
from torchship.exporter import aoti as aoti_module
from torchship.exporter import export_model
from torchship.exporter.parity import require_parity
from torchship.runtimes import get_runner


@pytest.mark.slow
@pytest.mark.parametrize("fmt", [Format.AOTI, Format.EXECUTORCH])
def test_built_format_matches_eager(fmt, tiny_built):
    model, artifact = tiny_built(fmt)
    report = require_parity(model, artifact)  # example, random and another batch size
    assert report.runtime == fmt.value and len(report.cases) == 5
    assert format_for_path(artifact.path) is fmt


@pytest.mark.slow
def test_aoti_reports_compile_time_and_hits_its_cache(tiny_built, built_cache_dir, tmp_path):
    model, first = tiny_built(Format.AOTI)
    assert first.details["compile_s"] > 0 and first.details["compiled_threads"] >= 1
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TORCHSHIP_CACHE_DIR", str(built_cache_dir))
        (again,) = export_model(model, tmp_path, formats=["aoti"])
    assert again.details["cache_hit"] and again.details["cache_key"] == first.details["cache_key"]
    assert again.details["compile_s"] == first.details["compile_s"]
    assert again.path.name == "model.aoti.pt2"


def _conv_bn_model():
    import torch

    from torchship.loaded import LoadedModel
    from torchship.specs import InputSpec

    torch.manual_seed(0)
    conv = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.BatchNorm2d(8), torch.nn.ReLU())
    spec = InputSpec("x", "float32", (2, 3, 16, 16), dynamic={0: "batch"})
    return LoadedModel(conv.eval(), (spec,), ("y",), source="test:conv-bn")


def _package_code(path) -> str:
    with zipfile.ZipFile(path) as package:
        return "".join(
            package.read(name).decode(errors="ignore")
            for name in package.namelist()
            if name.endswith(".cpp")
        )


@pytest.mark.slow
def test_aoti_package_is_frozen_batchnorm_folded_and_conv_prepacked(tmp_path, monkeypatch):
    # Inductor freezes only with grad off; a package compiled with grad on kept BatchNorm and
    # plain aten convolutions and ran 0.59x FP32 ORT where the frozen one runs 0.77x.
    import torch

    monkeypatch.setenv("TORCHSHIP_CACHE_DIR", str(tmp_path / "cache"))
    model = _conv_bn_model()
    with torch.enable_grad():  # as a user's script would be
        (artifact,) = export_model(model, tmp_path / "out", formats=["aoti"])
    code = _package_code(artifact.path)
    assert "batch_norm" not in code
    assert "mkldnn" in code and "convolution_pointwise" in code
    assert artifact.details["frozen"] is True and "unfrozen_because" not in artifact.details
    require_parity(model, artifact)


@pytest.mark.slow
def test_a_frozen_package_that_computes_otherwise_is_compiled_unfrozen(tmp_path, monkeypatch):
    # Inductor's frozen INT8 lowering of the demo (conv + residual add) computed cosine 0.01.
    monkeypatch.setenv("TORCHSHIP_CACHE_DIR", str(tmp_path / "cache"))
    real = aoti_module._frozen_mismatch
    verdicts = iter(["computed logits at cosine 0.0100 vs the program on the example input"])
    monkeypatch.setattr(aoti_module, "_frozen_mismatch", lambda m, p: next(verdicts, None))
    model = _conv_bn_model()
    (artifact,) = export_model(model, tmp_path / "out", formats=["aoti"])
    assert artifact.details["frozen"] is False
    assert artifact.details["unfrozen_because"].startswith("computed logits at cosine 0.0100")
    assert "batch_norm" in _package_code(artifact.path)  # compiled as the program is
    assert real(model, artifact.path) is None
    require_parity(model, artifact)


@pytest.mark.parametrize(
    ("package_output", "verdict"),
    [
        (lambda y: y + 1e-3, None),
        (lambda y: -y, "computed y at cosine -1.0000"),
        (lambda y: y * float("nan"), "computed y with 3136 non-finite values"),
    ],
)
def test_frozen_check_compares_the_package_with_its_program(
    tmp_path, monkeypatch, package_output, verdict
):
    import torch._inductor

    model = _conv_bn_model()
    monkeypatch.setattr(
        torch._inductor, "aoti_load_package", lambda path: lambda x: package_output(model.module(x))
    )
    got = aoti_module._frozen_mismatch(model, tmp_path / "m.aoti.pt2")
    assert got == verdict if verdict is None else got.startswith(verdict)


@pytest.mark.slow
def test_executorch_refuses_a_dim_above_its_bound(tiny_built):
    _, artifact = tiny_built(Format.EXECUTORCH)
    bound = artifact.details["max_dims"]["batch"]
    with get_runner("executorch")(artifact) as runner:
        assert runner.infer({"x": np.zeros((bound, 4), np.float32)})["y"].shape == (bound, 3)
        with pytest.raises(ConfigError, match=rf"batch {bound + 1} exceeds {bound}"):
            runner.infer({"x": np.zeros((bound + 1, 4), np.float32)})


def test_aoti_without_a_compiler_is_unavailable(tiny_module, tmp_path, monkeypatch):
    from torchship.loaded import LoadedModel
    from torchship.specs import InputSpec

    monkeypatch.setenv("TORCHSHIP_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(aoti_module, "compiler_unavailable_reason", lambda: "no C++ compiler")
    spec = InputSpec(name="x", dtype="float32", shape=(2, 4), dynamic={0: "batch"})
    model = LoadedModel(tiny_module, (spec,), ("y",), source="tiny")
    with pytest.raises(BackendUnavailableError, match="aoti: no C.. compiler"):
        export_model(model, tmp_path / "out", formats=["aoti"])
    assert not (tmp_path / "out" / "model.aoti.pt2").exists()


def test_formats_are_told_apart_by_suffix_and_layout(tmp_path):
    assert format_for_path("model.aoti.pt2") is Format.AOTI
    assert format_for_path("model.PTE") is Format.EXECUTORCH
    assert format_for_path("model.pt2") is Format.EXPORTED_PROGRAM  # not there: by suffix
    renamed = tmp_path / "renamed.pt2"
    with zipfile.ZipFile(renamed, "w") as archive:
        archive.writestr("renamed/data/aotinductor/model/x.wrapper.so", b"")
    assert format_for_path(renamed) is Format.AOTI
    assert Format.parse("aoti") is Format.AOTI and Format.parse("executorch") is Format.EXECUTORCH
    with pytest.raises(ConfigError, match="valid: .*aoti, executorch"):
        Format.parse("tflite")


@pytest.mark.parametrize(("name", "suffix"), [("aoti", ".aoti.pt2"), ("executorch", ".pte")])
def test_corrupt_built_file_is_model_load_error(name, suffix, tmp_path):
    from torchship.errors import ModelLoadError
    from torchship.specs import InputSpec

    cls = get_runner(name)
    if cls.unavailable_reason() is not None:
        pytest.skip(cls.unavailable_reason())
    path = tmp_path / f"broken{suffix}"
    path.write_bytes(b"\x00not a model\xff" * 10)
    spec = InputSpec(name="x", dtype="float32", shape=(2, 4))
    artifact = Artifact.create(path, format=format_for_path(path), inputs=[spec], outputs=["y"])
    with pytest.raises(ModelLoadError, match=f"broken{suffix}"):
        cls(artifact).load()
