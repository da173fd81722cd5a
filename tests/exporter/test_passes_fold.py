"""The fold-batchnorm graph pass."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from torchship.errors import ConfigError
from torchship.exporter.passes import PASSES, fold_batchnorm, run_passes
from torchship.loaded import LoadedModel
from torchship.models import load_demo


def _randomize_bn(module: nn.Module) -> nn.Module:
    torch.manual_seed(0)
    for bn in module.modules():
        if isinstance(bn, nn.modules.batchnorm._BatchNorm):
            bn.running_mean.uniform_(-1, 1)
            bn.running_var.uniform_(0.5, 2)
            bn.weight.data.uniform_(0.5, 1.5)
            bn.bias.data.uniform_(-0.5, 0.5)
    return module.eval()


def test_folding_the_demo_removes_every_batchnorm_and_keeps_outputs():
    model = load_demo()
    folded, results = run_passes(model)
    assert len(results[0].changes) == 15
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.module.modules())
    torch.testing.assert_close(
        torch.from_numpy(folded.run(model.example)["logits"]),
        torch.from_numpy(model.run(model.example)["logits"]),
        atol=1e-5,
        rtol=0,
    )
    assert any(isinstance(m, nn.BatchNorm2d) for m in model.module.modules())  # a copy


def test_linear_batchnorm1d_pair_is_folded():
    net = _randomize_bn(nn.Sequential(nn.Linear(8, 6), nn.BatchNorm1d(6), nn.ReLU()))
    result = fold_batchnorm(net)
    x = torch.randn(4, 8)
    assert result.changes == ("folded 1 into 0",)
    torch.testing.assert_close(result.module(x), net(x), atol=1e-5, rtol=0)


def test_conv_whose_output_is_also_used_elsewhere_is_not_folded():
    class Branchy(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv, self.bn = nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)

        def forward(self, x):
            y = self.conv(x)
            return self.bn(y) + y

    net = _randomize_bn(Branchy())
    result = fold_batchnorm(net)
    assert not result.changed
    x = torch.randn(2, 3, 8, 8)
    torch.testing.assert_close(result.module(x), net(x))


def test_untraceable_model_is_left_as_is_with_a_reason():
    class DataDependent(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv, self.bn = nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)

        def forward(self, x):
            if x.sum() > 0:
                return self.bn(self.conv(x))
            return self.conv(x)

    result = fold_batchnorm(DataDependent().eval())
    assert not result.changed and "fx tracing failed" in result.skipped


def test_unknown_pass_name_lists_the_valid_ones():
    with pytest.raises(ConfigError, match="unknown graph pass 'nope'; valid: fold-batchnorm"):
        PASSES.get("nope")
    assert isinstance(load_demo(), LoadedModel)
