"""Fuzz `--input NAME:SHAPE[:DTYPE[:LO..HI]]` (torchship.specs.parse_input_flag)."""

from __future__ import annotations

import math

from fuzzing import fuzz_settings
from hypothesis import given
from hypothesis import strategies as st

from torchship.specs import DTYPES, check_feeds, parse_input_flag, random_feeds

_DIMS = st.one_of(
    st.integers(-3, 40),
    st.integers(-(2**70), 2**70),
    st.sampled_from(["", "-0", "+4", "1_000", "٣", "1e3", "0x10", " 2", "nan", "9" * 400]),
)


@st.composite
def input_flags(draw) -> str:
    name = draw(st.one_of(st.from_regex(r"[A-Za-z_][A-Za-z0-9_.]{0,12}", fullmatch=True),
                          st.text(max_size=12)))  # fmt: skip
    dims = draw(st.lists(_DIMS, max_size=6))
    sep = draw(st.sampled_from(["x", "X", "*", ",", "xx"]))
    parts = [name, sep.join(str(d) for d in dims)]
    if draw(st.booleans()):
        parts.append(
            draw(st.one_of(st.sampled_from([*DTYPES, "", "float", "int4"]), st.text(max_size=8)))
        )
        if draw(st.booleans()):
            low, high = draw(st.floats(allow_nan=True)), draw(st.floats(allow_nan=True))
            parts.append(draw(st.sampled_from([f"{low}..{high}", f"{low}:{high}", f"{low}.."])))
    if draw(st.booleans()):
        parts += draw(st.lists(st.text(max_size=5), max_size=2))
    return ":".join(parts)


@fuzz_settings(400)
@given(st.one_of(input_flags(), st.text(max_size=60)))
def test_any_input_flag_parses_or_fails_in_one_line(expect_clean, text):
    spec = expect_clean(parse_input_flag, text)
    if spec is None:
        return
    assert all(isinstance(d, int) and d >= 0 for d in spec.shape)
    # bounded memory: an example input is something random_feeds can allocate
    assert math.prod(spec.shape) < 2**31, spec.shape
    if math.prod(spec.shape) <= 10_000:  # what a parsed spec promises: feeds can be made
        feeds = random_feeds([spec], seed=0)
        check_feeds([spec], feeds)
