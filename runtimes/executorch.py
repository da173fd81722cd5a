"""`executorch` runtime: an ExecuTorch program (`.pte`, XNNPACK delegate) through
`executorch.runtime`, the same runtime an edge device links.

Lowering happens in the exporter (`exporter/executorch_export.py`). Dynamic dims of a program
are bounded by the sizes it was lowered with (its memory plan): the bounds are in the
artifact's details, and a larger feed is refused with a ConfigError naming them.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from torchship.artifact import Format
from torchship.errors import ConfigError, ModelLoadError, first_line
from torchship.runtimes.base import RUNNERS, Runner
from torchship.runtimes.torch_eager import name_outputs

__all__ = ["ExecuTorchRunner", "executorch_unavailable_reason"]

log = logging.getLogger(__name__)

_INSTALL = "pip install torchship[executorch]"
_XNNPACK = "XnnpackBackend"


def executorch_unavailable_reason() -> str | None:
    """None when `executorch.runtime` with the XNNPACK backend is importable here."""
    try:
        from executorch.runtime import Runtime
    except ImportError:
        return f"executorch is not installed ({_INSTALL})"
    except Exception as exc:  # a build for another torch fails while loading its extension
        return f"executorch does not load beside this torch ({first_line(exc)}); {_INSTALL}"
    if not Runtime.get().backend_registry.is_available(_XNNPACK):
        return f"this executorch build has no {_XNNPACK}"
    return None


@RUNNERS.register("executorch")
class ExecuTorchRunner(Runner):
    """Loads the program's `forward` method and executes it on CPU tensors."""

    name = "executorch"
    formats = (Format.EXECUTORCH,)
    extra = "executorch"

    def __init__(self, artifact, *, threads: int | None = None) -> None:
        super().__init__(artifact, threads=threads)
        self._method: Any = None
        self._previous_threads: int | None = None

    @classmethod
    def unavailable_reason(cls) -> str | None:
        return executorch_unavailable_reason()

    def _load(self) -> None:
        from executorch.runtime import Runtime

        path = Path(self.artifact.path)
        if not path.is_file():
            raise ModelLoadError(f"{path}: no such ExecuTorch program")
        if self.threads is not None:
            # Before the method loads: XNNPACK keeps the pool it was initialised with, and
            # executing after a reset used a freed pool (a segfault in executorch 1.5.1).
            self._previous_threads = _thread_count()
            _set_threads(self.threads)
        try:
            program = Runtime.get().load_program(path)
            method = program.load_method("forward")
        except Exception as exc:  # RuntimeError with the runtime's error code
            self._restore_threads()
            raise ModelLoadError(
                f"{path}: not a loadable ExecuTorch program ({first_line(exc)})"
            ) from exc
        if method is None:
            self._restore_threads()
            raise ModelLoadError(f"{path}: the program has no `forward` method")
        self._program, self._method = program, method
        log.info("%s: loaded %s, threads %s", self.name, path.name, self.threads or "default")

    def _infer(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        import torch

        self._check_bounds(feeds)
        inputs = [torch.from_numpy(np.ascontiguousarray(feeds[s.name])) for s in self.inputs]
        outputs = self._method.execute(inputs)
        # The method's planned output buffers are reused by the next call: copy them out.
        arrays = [o.detach().numpy().copy() for o in outputs]
        return name_outputs(self.artifact.outputs, arrays)

    def _check_bounds(self, feeds: Mapping[str, np.ndarray]) -> None:
        bounds = self.artifact.details.get("max_dims", {})
        for spec in self.inputs:
            for axis, dim in spec.dynamic.items():
                size, bound = np.shape(feeds[spec.name])[axis], bounds.get(dim)
                if bound is not None and size > bound:
                    raise ConfigError(
                        f"input {spec.name!r}: {dim} {size} exceeds {bound}, the largest this "
                        f"ExecuTorch program was lowered for ({self.artifact.path.name}); "
                        "lower it again with a larger bound"
                    )

    def facts(self) -> dict[str, object]:
        return {"threads": _thread_count(), "backend": "xnnpack"}

    def _close(self) -> None:
        self._method = self._program = None
        self._restore_threads()

    def _restore_threads(self) -> None:
        if self._previous_threads is not None:
            _set_threads(self._previous_threads)
            self._previous_threads = None


def _thread_count() -> int:
    from executorch.extension.pybindings.portable_lib import _threadpool_get_thread_count

    return int(_threadpool_get_thread_count())


def _set_threads(count: int) -> None:
    # The only thread knob of the Python runtime; it replaces the process-wide pool, so it is
    # set before a method loads and restored after it is released, never while one is loaded.
    from executorch.extension.pybindings.portable_lib import _unsafe_reset_threadpool

    _unsafe_reset_threadpool(count)
