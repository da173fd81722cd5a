"""The fuzz suites' fixture (their helpers are in fuzzing.py)."""

from fuzzing import expect_clean  # noqa: F401 (a fixture, found by pytest here)
