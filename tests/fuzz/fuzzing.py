"""Shared by the fuzz suites (imported by name; `expect_clean` is their fixture, through
tests/fuzz/conftest.py): the settings (fixed seed, a few hundred examples, no deadline) and
the rule every hostile input must meet: success, or a ToolchainError with exit 1/2/3 and one
short line; any other exception type fails the example (and hypothesis shrinks it)."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, settings

from torchship.errors import ToolchainError

#: Messages name the file, key or value; a hostile value must not make one unbounded.
MAX_MESSAGE = ToolchainError.max_length

settings.register_profile(
    "fuzz",
    derandomize=True,  # a fixed seed: CI runs the same cases every time
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
    database=None,
)


def fuzz_settings(examples: int):
    return settings(settings.get_profile("fuzz"), max_examples=examples)


def check_failure(exc: BaseException) -> None:
    """A hostile input's failure as torchship must report it."""
    if not isinstance(exc, ToolchainError):
        raise exc  # a crash: let hypothesis report and shrink it
    message = str(exc)
    assert exc.exit_code in (1, 2, 3), exc
    assert message and "\n" not in message and "\r" not in message, repr(message)
    assert len(message) <= MAX_MESSAGE, f"{len(message)} characters: {message[:200]}..."


@pytest.fixture
def expect_clean():
    """expect_clean(fn, *args) -> fn's result, or None after a clean ToolchainError."""

    def run(fn, *args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except ToolchainError as exc:
            check_failure(exc)
            return None

    return run
