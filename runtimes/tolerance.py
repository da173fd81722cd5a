"""Tolerance profiles for parity checks, one per precision, looked up by name."""

from __future__ import annotations

import math
from dataclasses import dataclass

from torchship.errors import ConfigError
from torchship.registry import Registry

__all__ = ["ToleranceProfile", "TOLERANCES", "tolerance_for"]


@dataclass(frozen=True)
class ToleranceProfile:
    """Element-wise `|got - ref| <= atol + rtol * |ref|` plus a cosine floor per output.

    `atol=inf` switches the element-wise check off (only the cosine similarity counts).
    """

    atol: float
    rtol: float
    min_cosine: float

    def __post_init__(self) -> None:
        if self.atol < 0 or self.rtol < 0 or math.isnan(self.atol) or math.isnan(self.rtol):
            raise ConfigError(f"tolerances must be >= 0, got atol={self.atol} rtol={self.rtol}")
        if not -1.0 <= self.min_cosine <= 1.0:
            raise ConfigError(f"min_cosine must be in [-1, 1], got {self.min_cosine}")

    @property
    def checks_elements(self) -> bool:
        return math.isfinite(self.atol)

    def to_dict(self) -> dict:
        return {"atol": self.atol, "rtol": self.rtol, "min_cosine": self.min_cosine}


#: precision name ("fp32", "fp16", "int8") -> profile
TOLERANCES: Registry[ToleranceProfile] = Registry("tolerance profile")
TOLERANCES.register("fp32")(ToleranceProfile(atol=1e-4, rtol=1e-3, min_cosine=0.9999))
TOLERANCES.register("fp16")(ToleranceProfile(atol=1e-2, rtol=1e-2, min_cosine=0.999))
# bf16 keeps 8 mantissa bits: element errors of ~1e-2 on logits are normal, so only the cosine.
TOLERANCES.register("bf16")(ToleranceProfile(atol=math.inf, rtol=math.inf, min_cosine=0.999))
TOLERANCES.register("int8")(ToleranceProfile(atol=math.inf, rtol=math.inf, min_cosine=0.99))


def tolerance_for(precision: str) -> ToleranceProfile:
    """The profile for a precision name; ConfigError lists the known ones."""
    return TOLERANCES.get(precision)
