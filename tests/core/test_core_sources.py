"""Model sources: each kind loads; each bad input gives a clear error."""

from __future__ import annotations

import textwrap

import numpy as np
import pytest
import torch

from torchship import ConfigError, ModelLoadError, load_model
from torchship.specs import parse_input_flag

MODEL_FILE = textwrap.dedent(
    """
    import torch
    from torch import nn

    class Small(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3, padding=1)
            self.fc = nn.Linear(4, 2)

        def forward(self, x):
            return self.fc(self.conv(x).mean(dim=(2, 3)))

    def build():
        torch.manual_seed(0)
        return Small()

    def not_a_model():
        return 42

    def broken():
        raise RuntimeError("no weights here")
    """
)
SPEC = [parse_input_flag("x:2x3x8x8")]


@pytest.fixture()
def model_file(tmp_path):
    path = tmp_path / "my_models.py"
    path.write_text(MODEL_FILE)
    return path


def _build(model_file):
    return load_model(f"{model_file}:build", inputs=SPEC).module


def test_demo_source_has_inputs_and_weights_hash():
    model = load_model("demo")
    assert [s.name for s in model.inputs] == ["image"]
    assert model.outputs == ("logits",)
    assert model.weights_sha256 and len(model.weights_sha256) == 64


def test_file_factory_source_names_outputs(model_file):
    model = load_model(f"{model_file}:build", inputs=SPEC)
    assert model.outputs == ("output",)
    assert model.run(model.example)["output"].shape == (2, 2)


def test_module_factory_source():
    model = load_model(
        "torchship.models.zoo:resnet18_style", inputs=[parse_input_flag("i:1x3x64x64")]
    )
    assert model.run(model.example)["output"].shape[0] == 1


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_weights_are_loaded_strictly(model_file, tmp_path, suffix):
    trained = _build(model_file)
    with torch.no_grad():
        trained.fc.bias.fill_(3.0)
    path = tmp_path / f"w{suffix}"
    if suffix == ".pt":
        torch.save(trained.state_dict(), path)
    else:
        from safetensors.torch import save_file

        save_file(trained.state_dict(), str(path))
    model = load_model(f"{model_file}:build", inputs=SPEC, weights=path)
    assert torch.equal(model.module.fc.bias, torch.full((2,), 3.0))
    assert model.weights_sha256 and len(model.weights_sha256) == 64


def test_weights_that_do_not_fit_name_the_file(model_file, tmp_path):
    path = tmp_path / "wrong.pt"
    torch.save({"fc.weight": torch.zeros(5, 5)}, path)
    with pytest.raises(ModelLoadError, match=r"--weights .*wrong.pt: does not fit the model"):
        load_model(f"{model_file}:build", inputs=SPEC, weights=path)


def test_torchscript_source(model_file, tmp_path):
    module = _build(model_file)
    path = tmp_path / "m.ts"
    torch.jit.save(torch.jit.trace(module, torch.zeros(2, 3, 8, 8)), str(path))
    model = load_model(str(path), inputs=SPEC)
    expected = module(torch.from_numpy(model.example["x"])).detach().numpy()
    np.testing.assert_allclose(model.run(model.example)["output"], expected, atol=1e-6)


def test_pt2_source_reads_inputs_from_the_archive(model_file, tmp_path):
    module = _build(model_file)
    batch = torch.export.Dim("batch", min=1, max=64)
    program = torch.export.export(
        module, (torch.zeros(2, 3, 8, 8),), dynamic_shapes={"x": {0: batch}}
    )
    path = tmp_path / "m.pt2"
    torch.export.save(program, str(path))
    model = load_model(str(path))
    (spec,) = model.inputs
    assert spec.name == "x" and spec.dtype == "float32" and spec.dynamic == {0: "batch"}
    assert model.run(model.example)["output"].shape == (spec.shape[0], 2)


def test_pickled_model_is_refused_unless_trusted(model_file, tmp_path):
    path = tmp_path / "whole.pt"
    torch.save(_build(model_file), path)
    with pytest.raises(ModelLoadError, match="fully pickled model; unpickling runs arbitrary code"):
        load_model(str(path), inputs=SPEC)
    model = load_model(str(path), inputs=SPEC, trust_pickle=True)
    assert model.run(model.example)["output"].shape == (2, 2)


def test_state_dict_as_source_explains_what_to_do(model_file, tmp_path):
    path = tmp_path / "sd.pt"
    torch.save(_build(model_file).state_dict(), path)
    with pytest.raises(ModelLoadError, match="holds a state_dict, not a model.*--weights"):
        load_model(str(path), inputs=SPEC)


@pytest.mark.parametrize(
    ("source", "error", "match"),
    [
        ("missing.pt2", ModelLoadError, "missing.pt2: no such file"),
        ("missing.py:build", ModelLoadError, "missing.py: no such file"),
        ("no_colon_here", ConfigError, "is not understood"),
        ("torchship.nope:build", ModelLoadError, "cannot import 'torchship.nope'"),
        ("torchship.models:absent", ModelLoadError, "has no callable 'absent'"),
    ],
)
def test_bad_sources(source, error, match):
    with pytest.raises(error, match=match):
        load_model(source, inputs=SPEC)


def test_factory_errors(model_file):
    with pytest.raises(ModelLoadError, match="returned int, expected a torch.nn.Module"):
        load_model(f"{model_file}:not_a_model", inputs=SPEC)
    with pytest.raises(ModelLoadError, match="the factory raised: no weights here"):
        load_model(f"{model_file}:broken", inputs=SPEC)


def test_missing_inputs_are_asked_for(model_file):
    with pytest.raises(ConfigError, match="inputs are unknown; pass --input"):
        load_model(f"{model_file}:build")


def test_wrong_input_shape_names_the_inputs(model_file):
    with pytest.raises(ConfigError, match=r"failed on inputs x\[2, 5, 8, 8\]:float32"):
        load_model(f"{model_file}:build", inputs=[parse_input_flag("x:2x5x8x8")])


def test_corrupt_torchscript_archive(tmp_path):
    path = tmp_path / "bad.ts"
    path.write_bytes(b"not a zip archive at all")
    with pytest.raises(ModelLoadError, match="bad.ts: neither a TorchScript archive"):
        load_model(str(path), inputs=SPEC)


GHOST_MODULE = textwrap.dedent(
    """
    from torch import nn

    class Ghost(nn.Module):
        def forward(self, x):
            return x
    """
)


@pytest.fixture()
def ghost_pickle(tmp_path, monkeypatch):
    """A fully pickled model whose class lives in a module that is gone when it is loaded."""
    import importlib.util
    import sys

    source = tmp_path / "ghost_models_for_pickle.py"
    source.write_text(GHOST_MODULE)
    spec = importlib.util.spec_from_file_location("ghost_models_for_pickle", source)
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "ghost_models_for_pickle", module)
    spec.loader.exec_module(module)
    path = tmp_path / "ghost.pt"
    torch.save(module.Ghost(), path)
    monkeypatch.delitem(sys.modules, "ghost_models_for_pickle")
    return path


def test_trusted_pickle_with_a_missing_module_names_it(ghost_pickle, model_file):
    match = "unpickling needs the module 'ghost_models_for_pickle', which cannot be imported"
    with pytest.raises(ModelLoadError, match=f"ghost.pt: {match}"):
        load_model(str(ghost_pickle), inputs=SPEC, trust_pickle=True)
    with pytest.raises(ModelLoadError, match=f"--weights .*ghost.pt: {match}"):
        load_model(f"{model_file}:build", inputs=SPEC, weights=ghost_pickle, trust_pickle=True)


def test_weights_that_are_not_torch_save_files_give_one_line(model_file, tmp_path):
    path = tmp_path / "model.onnx"
    torch.onnx.export(_build(model_file), (torch.zeros(2, 3, 8, 8),), str(path), dynamo=False)
    with pytest.raises(ModelLoadError, match="model.onnx: not a torch.save file") as info:
        load_model(f"{model_file}:build", inputs=SPEC, weights=path)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("error", [RuntimeError("needs a GPU\nmore"), SyntaxError("bad syntax")])
def test_module_that_fails_to_import_is_a_load_error(monkeypatch, error):
    import importlib

    real = importlib.import_module

    def fake(name, *args, **kwargs):
        if name == "broken_user_models":
            raise error
        return real(name, *args, **kwargs)

    monkeypatch.setattr(importlib, "import_module", fake)
    first = str(error).splitlines()[0]
    with pytest.raises(ModelLoadError, match=f"cannot import 'broken_user_models': {first}$"):
        load_model("broken_user_models:build", inputs=SPEC)


def test_demo_with_wrong_inputs_is_config_error():
    match = r"demo: the model failed on inputs image\[1, 3, 32, 32\]"
    with pytest.raises(ConfigError, match=match):
        load_model("demo", inputs=[parse_input_flag("image:1x3x32x32")])
    model = load_model("demo", inputs=[parse_input_flag("image:2x1x32x32")])
    assert model.outputs == ("logits",) and model.example["image"].shape == (2, 1, 32, 32)
