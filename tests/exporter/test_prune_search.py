"""Latency-aware ratio search: bisection logic (stubbed timer) and one real measurement."""

from __future__ import annotations

import pytest

from torchship.errors import CheckFailedError, ConfigError
from torchship.exporter.pruning import search as prune_search
from torchship.exporter.pruning.search import measure_latency, search_ratio
from torchship.models import load_demo


@pytest.fixture
def macs_timer(monkeypatch):
    """Latency proportional to MACs: a deterministic stand-in for the runtime."""
    from torchship.exporter.pruning.channels import count_cost
    from torchship.loaded import to_torch_inputs

    def fake(model, **kwargs):
        args = to_torch_inputs(model.inputs, model.example)
        return count_cost(model.module, args)[0] / 1e6

    monkeypatch.setattr(prune_search, "measure_latency", fake)


def test_search_picks_the_smallest_ratio_meeting_the_speedup(macs_timer):
    result = search_ratio(load_demo(), target_speedup=2.0, steps=4)
    chosen = [r for r in result.rows if r.ratio == result.chosen_ratio][0]
    assert chosen.speedup >= 2.0
    assert all(r.speedup < 2.0 for r in result.rows if r.ratio < result.chosen_ratio)
    assert len(result.rows) == 4 and result.chosen.config.ratio == result.chosen_ratio


def test_unreachable_target_fails_the_check(macs_timer):
    with pytest.raises(CheckFailedError, match=r"no pruning ratio up to 0.85 reaches"):
        search_ratio(load_demo(), target_speedup=1000.0)


def test_bad_targets_are_rejected():
    with pytest.raises(ConfigError, match="exactly one of --target-speedup"):
        search_ratio(load_demo())
    with pytest.raises(ConfigError, match="--target-speedup 0.5 must be > 1"):
        search_ratio(load_demo(), target_speedup=0.5)


@pytest.mark.parametrize("runtime", ["ort-cpu", "torch"])
def test_latency_is_measured_through_the_runtime(runtime):
    assert measure_latency(load_demo(), runtime=runtime, batch=2, min_time_s=0.05) > 0


def test_taylor_search_uses_the_training_data(macs_timer):
    from torchship.exporter.pruning.channels import PruneConfig
    from torchship.exporter.pruning.run import prune
    from torchship.models import demo_dataset

    images, labels = demo_dataset("train")
    train = {"image": images[:32], "labels": labels[:32]}
    config = PruneConfig(importance="taylor")
    outcome = prune(load_demo(), config=config, train=train, target_speedup=1.5)
    assert outcome.search is not None and outcome.pruning.params[1] < outcome.pruning.params[0]
    with pytest.raises(ConfigError, match="importance 'taylor' needs data"):
        search_ratio(load_demo(), target_speedup=1.5, config=config)


def test_search_batch_below_one_is_rejected():
    from torchship.exporter.pruning.run import prune

    with pytest.raises(ConfigError, match="--batch 0: the batch timed by the search must be >= 1"):
        prune(load_demo(), target_speedup=2.0, batch=0)
