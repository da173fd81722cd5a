"""Target presets: the registry, the settings docs/design.md's measurements call for, `auto`."""

from __future__ import annotations

import pytest

from torchship.calibration import PRESETS, auto_preset_name, get_preset
from torchship.calibration.presets import QuantType8
from torchship.errors import ConfigError


def _x86(**isa) -> dict:
    return {"arch": "x86_64", "isa": {"avx2": True, **isa}, "vnni": False}


@pytest.mark.parametrize(
    ("machine", "gpu", "expected"),
    [
        (_x86(), False, "cpu-x86"),
        (_x86(avx512_vnni=True), False, "cpu-x86-vnni"),
        (_x86(avx_vnni=True), False, "cpu-x86-vnni"),
        ({"arch": "aarch64", "isa": {}}, False, "cpu-arm"),
        (_x86(avx512_vnni=True), True, "tensorrt"),
    ],
)
def test_auto_picks_from_machine_facts(machine, gpu, expected):
    assert auto_preset_name(machine, gpu_runtimes=gpu) == expected


def test_cpu_presets_are_u8s8_per_channel_and_tensorrt_is_symmetric_s8s8():
    for name in ("cpu-x86", "cpu-x86-vnni", "cpu-arm"):
        preset = PRESETS.get(name)
        assert (preset.activations, preset.weights) == (QuantType8.U8, QuantType8.S8)
        assert preset.per_channel
    assert PRESETS.get("cpu-x86").reduce_range and not PRESETS.get("cpu-x86-vnni").reduce_range
    trt = PRESETS.get("tensorrt")
    assert (trt.activations, trt.weights) == (QuantType8.S8, QuantType8.S8)
    assert trt.ort_extra_options()["ActivationSymmetric"] and trt.calibration_table


def test_auto_resolves_to_a_registered_preset_and_unknown_names_list_choices():
    assert get_preset("auto").name in PRESETS.names()
    with pytest.raises(ConfigError, match=r"unknown quantization target 'gpu'; valid: .*cpu-x86"):
        get_preset("gpu")


def test_presets_are_frozen():
    with pytest.raises(AttributeError):
        PRESETS.get("cpu-x86").per_channel = False  # type: ignore[misc]
