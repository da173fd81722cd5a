"""Typed errors. Each carries the exit code the CLI returns for it (docs/design.md)."""

from __future__ import annotations

__all__ = [
    "first_line",
    "EXIT_OK",
    "EXIT_CHECK_FAILED",
    "EXIT_BAD_INPUT",
    "EXIT_UNAVAILABLE",
    "ToolchainError",
    "ConfigError",
    "OutputError",
    "ModelLoadError",
    "ExportError",
    "ParityError",
    "CalibrationError",
    "BackendUnavailableError",
    "CheckFailedError",
]

EXIT_OK = 0
EXIT_CHECK_FAILED = 1
EXIT_BAD_INPUT = 2
EXIT_UNAVAILABLE = 3


class ToolchainError(Exception):
    """Base of every error torchship raises on purpose. The message is one line for the user."""

    exit_code: int = EXIT_BAD_INPUT
    #: Messages echo what the user gave, which may be anything (a 20 kB TOML string, a name
    #: with a newline): longer ones are cut in the middle, keeping the file and the verdict.
    max_length: int = 1000

    def __str__(self) -> str:
        text = " ".join(super().__str__().splitlines())
        if len(text) <= self.max_length:
            return text
        keep = self.max_length - 30
        head, tail = text[: keep * 2 // 3], text[len(text) - keep // 3 :]
        return f"{head} ...({len(text) - len(head) - len(tail)} characters)... {tail}"


class ConfigError(ToolchainError):
    """Bad usage: an unknown name, a malformed flag, a value out of range."""


class OutputError(ConfigError):
    """An output cannot be written: a full disk, a read-only or forbidden folder, one in use."""

    #: the file that could not be written, when known
    path: object = None


class ModelLoadError(ToolchainError):
    """A model source, weights file or artifact could not be read."""


class CalibrationError(ToolchainError):
    """Calibration / evaluation data does not fit the model."""


class ExportError(ToolchainError):
    """A valid model could not be turned into the requested artifact."""

    exit_code = EXIT_CHECK_FAILED


class CheckFailedError(ToolchainError):
    """A check ran and failed: accuracy budget, latency gate, regression."""

    exit_code = EXIT_CHECK_FAILED


class ParityError(CheckFailedError):
    """An artifact's outputs do not match eager PyTorch within the tolerance profile."""


class BackendUnavailableError(ToolchainError):
    """A requested runtime or device is not available on this machine."""

    exit_code = EXIT_UNAVAILABLE


def first_line(exc: BaseException, *, limit: int | None = None) -> str:
    """The first non-empty line of an exception's text (backend errors can span pages), or its
    type name; cut at `limit` characters when given."""
    line = next((x.strip() for x in str(exc).splitlines() if x.strip()), type(exc).__name__)
    return line if limit is None or len(line) <= limit else line[: limit - 3] + "..."
