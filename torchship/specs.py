"""Input descriptions (`InputSpec`), their trtexec-style flag syntax and input generation."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace

import numpy as np

from torchship.errors import ConfigError

__all__ = [
    "DTYPES",
    "InputSpec",
    "parse_input_flag",
    "apply_dynamic_flags",
    "random_feeds",
    "check_feeds",
]

DTYPES: dict[str, np.dtype] = {
    name: np.dtype(name)
    for name in ("float32", "float16", "float64", "int64", "int32", "int8", "uint8", "bool")
}
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.]*$")
#: The largest dimension and example size an input may have: int32 sizes (what ONNX Runtime and
#: TensorRT index with); an example input that large (8 GiB of float32) is not an example.
MAX_ELEMENTS = 2**31 - 1


def _short(value: object, limit: int = 60) -> str:
    """repr(value), cut: messages echo the user's text, which may be anything."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[: limit - 12]}...({len(text)} chars)"


@dataclass(frozen=True)
class InputSpec:
    """One model input: name, dtype, an example shape, and which axes are dynamic (axis -> name).

    `value_range` bounds random integer inputs (token ids must stay below the vocabulary size);
    it is ignored for floating-point inputs.
    """

    name: str
    dtype: str
    shape: tuple[int, ...]
    dynamic: Mapping[int, str] = field(default_factory=dict)
    value_range: tuple[float, float] | None = None

    def __post_init__(self) -> None:
        if not _NAME.match(self.name):
            raise ConfigError(f"input name {_short(self.name)} is not a valid identifier")
        if self.dtype not in DTYPES:
            raise ConfigError(
                f"input {self.name!r}: unknown dtype {_short(self.dtype)}; valid: "
                f"{', '.join(DTYPES)}"
            )
        if any(d < 0 for d in self.shape):
            raise ConfigError(
                f"input {self.name!r}: negative dimension in shape {_short(self.shape)}"
            )
        if math.prod(d for d in self.shape if d) > MAX_ELEMENTS:  # numpy checks 0-size too
            raise ConfigError(
                f"input {self.name!r}: shape {_short(self.shape)} is too large for an example "
                f"input (at most {MAX_ELEMENTS} elements)"
            )
        for axis in self.dynamic:
            if not 0 <= axis < len(self.shape):
                raise ConfigError(
                    f"input {self.name!r}: dynamic axis {axis} is outside its "
                    f"{len(self.shape)}-d shape {_short(self.shape)}"
                )
        object.__setattr__(self, "dynamic", dict(sorted(self.dynamic.items())))
        if self.value_range is not None:
            low, high = self.value_range
            problem = _range_problem(self.dtype, low, high)
            if problem:
                raise ConfigError(f"input {self.name!r}: value range {low}..{high} {problem}")

    @property
    def np_dtype(self) -> np.dtype:
        return DTYPES[self.dtype]

    @property
    def symbolic_shape(self) -> list[int | str]:
        """The shape with dynamic axes replaced by their names (as ONNX writes it)."""
        return [self.dynamic.get(i, d) for i, d in enumerate(self.shape)]

    def with_batch(self, batch: int) -> InputSpec:
        return replace(self, shape=(batch, *self.shape[1:]))

    def matches(self, shape: Sequence[int]) -> bool:
        if len(shape) != len(self.shape):
            return False
        return all(
            i in self.dynamic or s == d
            for i, (s, d) in enumerate(zip(shape, self.shape, strict=True))
        )

    def to_dict(self) -> dict:
        out: dict = {"name": self.name, "dtype": self.dtype, "shape": list(self.symbolic_shape)}
        out["example_shape"] = list(self.shape)
        if self.value_range is not None:
            out["value_range"] = list(self.value_range)
        return out

    @classmethod
    def from_dict(cls, data: Mapping) -> InputSpec:
        symbolic = data["shape"]
        example = data.get("example_shape") or [d if isinstance(d, int) else 1 for d in symbolic]
        dynamic = {i: d for i, d in enumerate(symbolic) if isinstance(d, str)}
        rng = data.get("value_range")
        return cls(
            name=data["name"],
            dtype=data["dtype"],
            shape=tuple(int(d) for d in example),
            dynamic=dynamic,
            value_range=tuple(rng) if rng else None,
        )


def parse_input_flag(text: str) -> InputSpec:
    """Parse `NAME:SHAPE[:DTYPE[:LO..HI]]`, e.g. `input_ids:1x32:int64:0..1000`."""
    parts = text.split(":")
    if len(parts) < 2 or len(parts) > 4 or not parts[0]:
        raise ConfigError(
            f"--input {_short(text)}: expected NAME:SHAPE[:DTYPE[:LO..HI]], e.g. image:1x3x224x224"
        )
    name, shape_text = parts[0], parts[1]
    try:
        shape = tuple(int(d) for d in shape_text.lower().split("x")) if shape_text else ()
    except ValueError:
        raise ConfigError(
            f"--input {_short(text)}: shape {_short(shape_text)} must be integers joined by "
            "'x', e.g. 1x3x32x32"
        ) from None
    dtype = parts[2] if len(parts) > 2 and parts[2] else "float32"
    value_range = _parse_range(text, parts[3], dtype) if len(parts) > 3 else None
    return InputSpec(name=name, dtype=dtype, shape=shape, value_range=value_range)


def _parse_range(flag: str, text: str, dtype: str) -> tuple[float, float]:
    lo, sep, hi = text.partition("..")
    try:
        low, high = float(lo), float(hi)
    except ValueError:
        low, high = 0.0, -1.0
    problem = _range_problem(dtype, low, high) if sep else "must be LO..HI with LO < HI"
    if problem:
        raise ConfigError(f"--input {_short(flag)}: value range {_short(text)} {problem}")
    return low, high


def _range_problem(dtype: str, low: float, high: float) -> str | None:
    """Why `low..high` cannot bound random values of `dtype`, or None when it can.

    Integer inputs draw from [int(LO), int(HI)): HI is exclusive, like a vocabulary size.
    """
    if not (math.isfinite(low) and math.isfinite(high)):
        return "must have finite bounds"
    if not high > low:
        return "must be LO..HI with LO < HI"
    np_dtype = DTYPES.get(dtype)
    if np_dtype is None or np_dtype == np.bool_:
        return None
    if np.issubdtype(np_dtype, np.integer):
        info = np.iinfo(np_dtype)
        if not int(high) > int(low):
            return f"holds no {dtype} value: integers are drawn from int(LO) up to int(HI) - 1"
        if int(low) < info.min or int(high) > info.max + 1:
            return f"must lie within {info.min}..{info.max + 1} for {dtype} (HI is exclusive)"
        return None
    limit = float(np.finfo(np_dtype).max)
    if low < -limit or high > limit:
        return f"must lie within {-limit:g}..{limit:g} for {dtype}"
    return None


def apply_dynamic_flags(
    specs: Sequence[InputSpec], *, dynamic_batch: bool = False, dynamic: Sequence[str] = ()
) -> list[InputSpec]:
    """Apply `--dynamic-batch` and `--dynamic NAME:AXIS=DIM` flags to parsed specs."""
    by_name = {s.name: dict(s.dynamic) for s in specs}
    if dynamic_batch:
        for s in specs:
            if not s.shape:
                raise ConfigError(f"--dynamic-batch: input {s.name!r} is a scalar, it has no batch")
            by_name[s.name][0] = "batch"
    for flag in dynamic:
        m = re.fullmatch(r"([^:]+):(\d+)=([A-Za-z_][A-Za-z0-9_]*)", flag)
        if not m:
            raise ConfigError(f"--dynamic {flag!r}: expected NAME:AXIS=DIM, e.g. input_ids:1=seq")
        name, axis, dim = m.group(1), int(m.group(2)), m.group(3)
        if name not in by_name:
            raise ConfigError(
                f"--dynamic {flag!r}: no input named {name!r}; inputs: {', '.join(by_name)}"
            )
        by_name[name][axis] = dim
    return [replace(s, dynamic=by_name[s.name]) for s in specs]


def random_feeds(
    specs: Sequence[InputSpec], *, seed: int, batch: int | None = None
) -> dict[str, np.ndarray]:
    """Random inputs matching `specs`, reproducible by seed. `batch` replaces axis 0 of every
    input that has one; scalar inputs stay scalars."""
    rng = np.random.default_rng(seed)
    feeds = {}
    for spec in specs:
        shape = spec.with_batch(batch).shape if batch is not None and spec.shape else spec.shape
        dtype = spec.np_dtype
        if dtype == np.bool_:
            value = rng.random(shape) < 0.5
        elif np.issubdtype(dtype, np.integer):
            low, high = spec.value_range or (0, 2)
            value = rng.integers(int(low), int(high), size=shape)
        else:
            value = rng.standard_normal(shape)
            if spec.value_range is not None:
                low, high = spec.value_range
                value = rng.uniform(low, high, size=shape)
        # asarray, not ascontiguousarray: that turns a scalar (0-d) input into shape (1,)
        feeds[spec.name] = np.asarray(value, dtype=dtype, order="C")
    return feeds


def check_feeds(specs: Sequence[InputSpec], feeds: Mapping[str, np.ndarray]) -> None:
    """Raise ConfigError naming the input when `feeds` does not fit `specs`."""
    expected = {s.name for s in specs}
    missing = sorted(expected - set(feeds))
    extra = sorted(set(feeds) - expected)
    if missing or extra:
        raise ConfigError(
            f"inputs do not match the model: missing {missing or 'none'}, "
            f"unexpected {extra or 'none'}; the model takes {sorted(expected)}"
        )
    for spec in specs:
        value = np.asarray(feeds[spec.name])
        if value.dtype != spec.np_dtype:
            raise ConfigError(
                f"input {spec.name!r}: dtype {value.dtype} given, {spec.dtype} expected"
            )
        if not spec.matches(value.shape):
            raise ConfigError(
                f"input {spec.name!r}: shape {list(value.shape)} given, "
                f"{spec.symbolic_shape} expected"
            )
