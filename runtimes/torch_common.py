"""Shared pieces of the torch-based runners: thread settings and named outputs."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from torchship.specs import InputSpec

__all__ = ["TorchThreads", "run_module", "error_summary"]


class TorchThreads:
    """Sets torch's intra-op thread count and restores the previous one (it is process-wide)."""

    def __init__(self, threads: int | None) -> None:
        self.threads = threads
        self._previous: int | None = None

    def apply(self) -> None:
        import torch

        if self.threads is not None:
            self._previous = torch.get_num_threads()
            torch.set_num_threads(self.threads)

    def restore(self) -> None:
        import torch

        if self._previous is not None:
            torch.set_num_threads(self._previous)
            self._previous = None


def run_module(
    module: object,
    specs: Sequence[InputSpec],
    outputs: Sequence[str],
    feeds: Mapping[str, np.ndarray],
) -> dict[str, np.ndarray]:
    """Call `module` on numpy feeds (in spec order); outputs by name (`output_N` when unnamed)."""
    import torch

    from torchship.loaded import flatten_outputs

    args = tuple(torch.from_numpy(np.ascontiguousarray(feeds[s.name])) for s in specs)
    with torch.inference_mode():
        arrays = flatten_outputs(module(*args))  # type: ignore[operator]
    names = list(outputs) if len(outputs) == len(arrays) else _default_names(len(arrays))
    return dict(zip(names, arrays, strict=True))


def _default_names(count: int) -> list[str]:
    return [f"output_{i}" for i in range(count)]


def error_summary(exc: BaseException) -> str:
    """`Type: first line of the message`, for one-line errors that wrap a backend's exception."""
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0] if text else 'no message'}"
