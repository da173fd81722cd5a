"""The runner contract: load -> infer -> close, with input checks done once, here."""

from __future__ import annotations

import abc
from collections.abc import Callable, Mapping, Sequence
from typing import ClassVar

import numpy as np

from torchship.artifact import Artifact, Format
from torchship.errors import (
    BackendUnavailableError,
    ConfigError,
    ModelLoadError,
    ToolchainError,
    first_line,
)
from torchship.registry import Registry
from torchship.specs import InputSpec, check_feeds

__all__ = [
    "Runner",
    "RUNNERS",
    "get_runner",
    "available_runners",
    "require_available",
    "default_runtime_for",
]

RUNNERS: Registry[type[Runner]] = Registry("runtime")


class Runner(abc.ABC):
    """Runs one artifact (or an in-memory module for `torch`) on numpy feeds.

    Subclasses implement `_load`, `_infer`, `_close` and `unavailable_reason`; the base class
    checks feeds against the artifact's inputs and tracks the loaded state.
    """

    name: ClassVar[str]
    formats: ClassVar[tuple[Format, ...]]
    device: ClassVar[str] = "cpu"
    #: The pip extra that provides this runtime when it is missing.
    extra: ClassVar[str | None] = None
    #: A precision below the artifact's that this backend computes in (e.g. "bf16"); parity
    #: then checks with that precision's tolerance profile. None: the artifact's own.
    computes_in: ClassVar[str | None] = None

    def __init__(self, artifact: Artifact, *, threads: int | None = None) -> None:
        if artifact.format not in self.formats:
            accepted = ", ".join(f.value for f in self.formats)
            raise ConfigError(
                f"runtime {self.name!r} cannot run a {artifact.format.value} artifact "
                f"({artifact.path.name}); it runs: {accepted}"
            )
        if threads is not None and threads < 1:
            raise ConfigError(f"threads must be >= 1, got {threads}")
        self.artifact = artifact
        self.threads = threads
        self._loaded = False

    @classmethod
    @abc.abstractmethod
    def unavailable_reason(cls) -> str | None:
        """None when this runtime can run here, else why not (one line)."""

    @property
    def inputs(self) -> Sequence[InputSpec]:
        return self.artifact.inputs

    def load(self) -> Runner:
        reason = self.unavailable_reason()
        if reason is not None:
            raise BackendUnavailableError(_unavailable_message(self.name, reason))
        if not self._loaded:
            self._load()
            self._loaded = True
        return self

    def infer(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run once; returns outputs by name as numpy arrays.

        ConfigError when `feeds` do not fit the artifact's inputs; ModelLoadError when the
        backend rejects them (the artifact describes inputs the model does not take).
        """
        self._require_loaded()
        check_feeds(self.inputs, feeds)
        return self._run(feeds)

    def checked_call(self, feeds: Mapping[str, np.ndarray]) -> Callable[[], dict[str, np.ndarray]]:
        """Check `feeds` once and return a call that runs them without checking again.

        For timing loops: the check costs microseconds, a large share of a tiny model's call.
        `feeds` must not change while the call is in use.
        """
        self._require_loaded()
        check_feeds(self.inputs, feeds)

        def call() -> dict[str, np.ndarray]:
            if not self._loaded:
                raise RuntimeError(f"{self.name} runner used after close()")
            return self._run(feeds)

        return call

    def _require_loaded(self) -> None:
        if not self._loaded:
            raise RuntimeError(f"{self.name} runner used before load()")

    def _run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        try:
            return self._infer(feeds)
        except ToolchainError:
            raise
        except Exception as exc:  # each backend raises its own types for inputs it rejects
            raise ModelLoadError(
                f"runtime {self.name!r} failed to run {self.artifact.path.name} on inputs "
                f"{_describe_feeds(feeds)}: {first_line(exc, limit=200)}; "
                "check --input against the model"
            ) from exc

    def close(self) -> None:
        if self._loaded:
            self._close()
            self._loaded = False

    def __enter__(self) -> Runner:
        return self.load()

    def __exit__(self, *exc: object) -> None:
        self.close()

    @abc.abstractmethod
    def _load(self) -> None: ...

    @abc.abstractmethod
    def _infer(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]: ...

    def _close(self) -> None:  # noqa: B027 - optional hook, not abstract
        """Release sessions/modules; the default drops nothing."""

    def facts(self) -> dict[str, object]:
        """What the backend chose for this run that a result must record (e.g. the precision
        it computes in); read while loaded. The default records nothing."""
        return {}


def _describe_feeds(feeds: Mapping[str, np.ndarray]) -> str:
    parts = [f"{name} {np.asarray(v).dtype}{list(np.shape(v))}" for name, v in feeds.items()]
    return ", ".join(parts) or "(none)"


def _unavailable_message(name: str, reason: str) -> str:
    here = ", ".join(available_runners()) or "none"
    return f"runtime {name!r} is not available: {reason}. Available here: {here}"


def get_runner(name: str) -> type[Runner]:
    """The runner class for `name`; ConfigError lists valid names when unknown."""
    _import_backends()
    return RUNNERS.get(name)


def available_runners() -> list[str]:
    _import_backends()
    return [n for n in RUNNERS if RUNNERS.get(n).unavailable_reason() is None]


def require_available(name: str) -> type[Runner]:
    cls = get_runner(name)
    reason = cls.unavailable_reason()
    if reason is not None:
        raise BackendUnavailableError(_unavailable_message(name, reason))
    return cls


def default_runtime_for(fmt: Format) -> str:
    return {
        Format.ONNX: "ort-cpu",
        Format.TORCHSCRIPT: "torchscript",
        Format.EXPORTED_PROGRAM: "torch",
        Format.EAGER: "torch",
        Format.TENSORRT_ENGINE: "tensorrt",
        Format.AOTI: "aoti",
        Format.EXECUTORCH: "executorch",
    }[fmt]


def _import_backends() -> None:
    # Backends register on import; their heavy/optional dependencies load lazily inside them.
    import torchship.runtimes.aoti  # noqa: F401
    import torchship.runtimes.executorch  # noqa: F401
    import torchship.runtimes.onnxruntime  # noqa: F401
    import torchship.runtimes.openvino  # noqa: F401
    import torchship.runtimes.tensorrt.runner  # noqa: F401
    import torchship.runtimes.torch_cuda  # noqa: F401
    import torchship.runtimes.torch_eager  # noqa: F401
    import torchship.runtimes.torchscript  # noqa: F401
