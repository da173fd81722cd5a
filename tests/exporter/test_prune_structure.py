"""Structured pruning: coupled layers, physically smaller exports, parity, errors."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper
from torch import nn

from torchship.errors import ConfigError
from torchship.exporter import ExportOptions, export_model, require_parity
from torchship.exporter.pruning.channels import PruneConfig, prunable_layers, prune_channels
from torchship.loaded import LoadedModel
from torchship.models.demo import make_stages
from torchship.specs import InputSpec


class ResidualNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 32, 3, padding=1, bias=False), nn.BatchNorm2d(32))
        self.stages = make_stages(32, (32, 64), (2, 1))
        self.fc = nn.Linear(64, 10)

    def forward(self, x):
        x = self.stages(torch.relu(self.stem(x)))
        return self.fc(x.mean(dim=(2, 3)))


class ConcatNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 32, 3, padding=1)
        self.b = nn.Conv2d(3, 32, 1)
        self.mix = nn.Conv2d(64, 48, 3, padding=1)
        self.fc = nn.Linear(48, 5)

    def forward(self, x):
        y = torch.cat([torch.relu(self.a(x)), torch.relu(self.b(x))], dim=1)
        return self.fc(torch.relu(self.mix(y)).mean(dim=(2, 3)))


class MobileNetStyle(nn.Module):
    """Inverted residuals with depthwise convs, plus a grouped conv."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU6())
        self.expand = nn.Sequential(nn.Conv2d(32, 96, 1), nn.BatchNorm2d(96), nn.ReLU6())
        self.dw = nn.Sequential(nn.Conv2d(96, 96, 3, padding=1, groups=96), nn.BatchNorm2d(96))
        self.project = nn.Sequential(nn.Conv2d(96, 32, 1), nn.BatchNorm2d(32))
        self.grouped = nn.Sequential(nn.Conv2d(32, 64, 3, padding=1, groups=4), nn.ReLU())
        self.fc = nn.Linear(64, 7)

    def forward(self, x):
        x = self.stem(x)
        x = x + self.project(torch.relu(self.dw(self.expand(x))))
        return self.fc(self.grouped(x).mean(dim=(2, 3)))


class MLPBlockNet(nn.Module):
    """Transformer-style pre-norm MLP block on the residual stream, then a head."""

    def __init__(self, d: int = 32) -> None:
        super().__init__()
        self.embed = nn.Linear(16, d)
        self.norm = nn.LayerNorm(d)
        self.fc1 = nn.Linear(d, 4 * d)
        self.fc2 = nn.Linear(4 * d, d)
        self.head = nn.Linear(d, 3)

    def forward(self, x):
        x = self.embed(x)
        x = x + self.fc2(nn.functional.gelu(self.fc1(self.norm(x))))
        return self.head(x.mean(dim=1))


def _image_model(module: nn.Module, size: int = 16) -> LoadedModel:
    torch.manual_seed(0)
    spec = InputSpec("image", "float32", (2, 3, size, size), dynamic={0: "batch"})
    return LoadedModel(module.eval(), (spec,), ("logits",), "test")


def _models() -> dict[str, LoadedModel]:
    torch.manual_seed(0)
    classes = {"residual": ResidualNet, "concat": ConcatNet, "mobilenet": MobileNetStyle}
    nets = {name: cls() for name, cls in classes.items()}
    models = {name: _image_model(net) for name, net in nets.items()}
    spec = InputSpec("tokens", "float32", (2, 6, 16), dynamic={0: "batch"})
    models["mlp"] = LoadedModel(MLPBlockNet().eval(), (spec,), ("logits",), "test")
    return models


def _onnx_weight_shapes(path) -> dict[str, tuple[int, ...]]:
    graph = onnx.load(str(path)).graph
    return {i.name: tuple(numpy_helper.to_array(i).shape) for i in graph.initializer}


def _total_weights(path) -> int:
    return sum(int(np.prod(s)) for s in _onnx_weight_shapes(path).values())


@pytest.mark.parametrize("name", ["residual", "concat", "mobilenet", "mlp"])
def test_pruned_model_keeps_output_shapes_exports_smaller_and_passes_parity(name, tmp_path):
    model = _models()[name]
    result = prune_channels(model, config=PruneConfig(ratio=0.5))
    assert result.changed_layers, "nothing was pruned"
    assert result.params[1] < result.params[0] and result.macs[1] < result.macs[0]
    expected = model.run(model.example)["logits"].shape
    assert result.model.run(model.example)["logits"].shape == expected
    options = ExportOptions(dynamo=False)
    before = export_model(model, tmp_path / "before", formats=["onnx"], options=options)[0]
    after = export_model(result.model, tmp_path / "after", formats=["onnx"], options=options)[0]
    require_parity(result.model, after)
    assert _total_weights(after.path) < 0.75 * _total_weights(before.path)


def test_pruned_channel_counts_are_rounded_and_reported():
    result = prune_channels(_models()["residual"], config=PruneConfig(ratio=0.5, round_to=8))
    for layer, (before, after) in result.changed_layers.items():
        assert after % 8 == 0 and 0 < after < before, layer
    data = result.to_dict()
    assert data["channels"]["stem.0"] == {"before": 32, "after": 16}
    assert "fc" in data["protected_layers"]  # the output layer is never pruned


def test_depthwise_conv_stays_depthwise():
    result = prune_channels(_models()["mobilenet"], config=PruneConfig(ratio=0.5))
    dw = result.model.module.dw[0]
    assert dw.groups == dw.in_channels == dw.out_channels < 96
    assert result.model.module.grouped[0].groups == 4


class RawInputResidual(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2, self.head = nn.Linear(16, 64), nn.Linear(64, 16), nn.Linear(16, 3)

    def forward(self, x):
        return self.head((x + self.fc2(torch.relu(self.fc1(x)))).mean(dim=1))


def test_residual_stream_is_pruned_together_from_its_first_layer():
    result = prune_channels(_models()["mlp"], config=PruneConfig(ratio=0.5))
    assert result.plan["fc1"] == [128, 64]
    assert result.plan["embed"] == result.plan["fc2"] == [32, 16]
    assert result.model.module.norm.normalized_shape == (16,)


def test_residual_add_with_the_raw_input_is_not_pruned():
    spec = InputSpec("x", "float32", (2, 5, 16))
    model = LoadedModel(RawInputResidual().eval(), (spec,), ("y",), "test")
    result = prune_channels(model, config=PruneConfig(ratio=0.5))
    assert result.plan["fc1"] == [64, 32]
    assert result.plan["fc2"] == [16, 16]  # its output meets the model input in the add


def test_ignored_layer_keeps_its_channels():
    model = _models()["residual"]
    result = prune_channels(model, config=PruneConfig(ratio=0.5, ignore=("stem.0",)))
    assert result.plan["stem.0"] == [32, 32]
    assert "stem.0" not in prunable_layers(model, ignore=["stem.0"])


def test_global_pruning_and_taylor_importance_run():
    model = _models()["concat"]
    rng = np.random.default_rng(0)
    data = {"image": rng.standard_normal((16, 3, 16, 16), dtype=np.float32),
            "labels": rng.integers(0, 5, 16)}  # fmt: skip
    taylor = prune_channels(model, config=PruneConfig(importance="taylor"), data=data)
    glob = prune_channels(model, config=PruneConfig(global_pruning=True, ratio=0.4))
    assert taylor.params[1] < taylor.params[0] and glob.params[1] < glob.params[0]


def test_original_model_is_untouched():
    model = _models()["concat"]
    prune_channels(model, config=PruneConfig(ratio=0.5))
    assert model.module.a.out_channels == 32


@pytest.mark.parametrize("ratio", [0.0, 1.0, -0.2, 1.5])
def test_ratio_outside_open_interval_is_rejected(ratio):
    with pytest.raises(ConfigError, match=r"outside \(0, 1\)"):
        PruneConfig(ratio=ratio)


def test_unknown_ignored_layer_is_rejected():
    with pytest.raises(ConfigError, match="--ignore 'nope': no such layer; layers: .*stem.0"):
        prune_channels(_models()["residual"], config=PruneConfig(ignore=("nope",)))


def test_model_without_prunable_layers_is_rejected():
    spec = InputSpec("x", "float32", (2, 4))
    model = LoadedModel(nn.Sequential(nn.Linear(4, 3)).eval(), (spec,), ("y",), "test")
    with pytest.raises(ConfigError, match="no prunable layers"):
        prune_channels(model)


def test_unknown_importance_and_taylor_without_data_are_rejected():
    with pytest.raises(ConfigError, match="unknown importance 'l3'; valid: l1, l2, taylor"):
        PruneConfig(importance="l3")
    with pytest.raises(ConfigError, match="importance 'taylor' needs data"):
        prune_channels(_models()["concat"], config=PruneConfig(importance="taylor"))


def test_pruning_a_saved_pt2_says_to_prune_the_source(tmp_path):
    from torchship.exporter.pruning.unstructured import prune_unstructured
    from torchship.sources import load_model

    model = _models()["concat"]
    (artifact,) = export_model(model, tmp_path, formats=["exported-program"])
    loaded = load_model(str(artifact.path))
    match = r"cannot prune a torch.export program \(.pt2\).*prune the original model source"
    with pytest.raises(ConfigError, match=match):
        prune_channels(loaded)
    with pytest.raises(ConfigError, match=match):
        prune_unstructured(loaded, sparsity=0.5)


def test_taylor_labels_outside_the_classes_are_calibration_errors():
    from torchship.errors import CalibrationError

    rng = np.random.default_rng(0)
    images = rng.standard_normal((8, 3, 16, 16), dtype=np.float32)
    config = PruneConfig(importance="taylor")
    data = {"image": images, "labels": np.arange(1, 9) % 6}  # 1-based: 5 is one too many
    with pytest.raises(CalibrationError, match="label 5 is out of range: the model has 5 classes"):
        prune_channels(_models()["concat"], config=config, data=data)
