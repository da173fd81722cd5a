"""Input specs: the trtexec-style flags, dynamic dims, random feeds and feed checks."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from torchship.errors import ConfigError
from torchship.specs import (
    InputSpec,
    apply_dynamic_flags,
    check_feeds,
    parse_input_flag,
    random_feeds,
)


@given(
    st.lists(st.integers(1, 64), min_size=1, max_size=5),
    st.sampled_from(["float32", "int64", "int32", "float16", "bool"]),
)
def test_flag_round_trip(shape, dtype):
    spec = parse_input_flag(f"x:{'x'.join(map(str, shape))}:{dtype}")
    assert spec.shape == tuple(shape) and spec.dtype == dtype
    assert InputSpec.from_dict(spec.to_dict()) == spec


def test_transformer_flags():
    specs = [
        parse_input_flag("input_ids:1x32:int64:0..30522"),
        parse_input_flag("attention_mask:1x32:int64"),
    ]
    specs = apply_dynamic_flags(
        specs, dynamic_batch=True, dynamic=["input_ids:1=seq", "attention_mask:1=seq"]
    )
    assert specs[0].symbolic_shape == ["batch", "seq"]
    feeds = random_feeds(specs, seed=1, batch=3)
    assert feeds["input_ids"].shape == (3, 32) and feeds["input_ids"].dtype == np.int64
    assert feeds["input_ids"].max() < 30522 and feeds["attention_mask"].max() <= 1
    check_feeds(
        specs,
        {"input_ids": np.zeros((5, 7), np.int64), "attention_mask": np.zeros((5, 7), np.int64)},
    )


@pytest.mark.parametrize(
    ("flag", "match"),
    [
        ("x", "expected NAME:SHAPE"),
        ("x:1x3:float32:0..1:extra", "expected NAME:SHAPE"),
        ("x:1xa", "must be integers joined by 'x'"),
        ("x:1x3:cfloat", "unknown dtype 'cfloat'; valid: float32"),
        ("x:1x3:int64:5..1", "must be LO..HI with LO < HI"),
        ("1x:1x3", "not a valid identifier"),
    ],
)
def test_bad_flags(flag, match):
    with pytest.raises(ConfigError, match=match):
        parse_input_flag(flag)


def test_bad_dynamic_flags():
    specs = [parse_input_flag("x:1x3")]
    with pytest.raises(ConfigError, match="no input named 'y'; inputs: x"):
        apply_dynamic_flags(specs, dynamic=["y:1=seq"])
    with pytest.raises(ConfigError, match="expected NAME:AXIS=DIM"):
        apply_dynamic_flags(specs, dynamic=["x:seq"])
    with pytest.raises(ConfigError, match="dynamic axis 4 is outside"):
        apply_dynamic_flags(specs, dynamic=["x:4=seq"])


def test_check_feeds_names_the_input():
    specs = apply_dynamic_flags([parse_input_flag("image:1x3x8x8")], dynamic_batch=True)
    with pytest.raises(ConfigError, match=r"input 'image': shape \[2, 3, 9, 8\] given"):
        check_feeds(specs, {"image": np.zeros((2, 3, 9, 8), np.float32)})
    with pytest.raises(ConfigError, match="input 'image': dtype float64 given, float32 expected"):
        check_feeds(specs, {"image": np.zeros((2, 3, 8, 8))})
    with pytest.raises(ConfigError, match=r"missing \['image'\], unexpected \['x'\]"):
        check_feeds(specs, {"x": np.zeros(1)})


@pytest.mark.parametrize(
    ("flag", "match"),
    [
        ("ids:2x4:int64:0..0.5", "holds no int64 value"),
        ("ids:2x4:int64:0..1e30", r"must lie within -9223372036854775808\.\.9223372036854775808"),
        ("ids:2x4:uint8:-1..10", r"must lie within 0\.\.256 for uint8"),
        ("x:2x4:float32:0..inf", "must have finite bounds"),
        ("x:2x4:float32:nan..5", "must have finite bounds"),
        ("x:2x4:float16:0..1e6", "must lie within -65504..65504 for float16"),
    ],
)
def test_value_ranges_that_cannot_be_drawn_are_rejected(flag, match):
    with pytest.raises(ConfigError, match=rf"--input '{flag}': value range .*{match}"):
        parse_input_flag(flag)


def test_value_range_is_checked_for_specs_built_in_code():
    with pytest.raises(ConfigError, match=r"input 'ids': value range 0..0.5 holds no int64 value"):
        InputSpec("ids", "int64", (2, 4), value_range=(0, 0.5))
    assert parse_input_flag("ids:2x4:uint8:0..256").value_range == (0, 256)


def test_scalar_inputs_stay_zero_dimensional():
    from torchship.loaded import to_torch_inputs

    specs = [parse_input_flag("t:"), parse_input_flag("x:2x3")]
    feeds = random_feeds(specs, seed=0)
    assert feeds["t"].shape == () and feeds["x"].shape == (2, 3)
    assert [tuple(t.shape) for t in to_torch_inputs(specs, feeds)] == [(), (2, 3)]
