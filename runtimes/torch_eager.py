"""`torch` runtime: an in-memory nn.Module (eager) or a torch.export `.pt2` file."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

import numpy as np
import torch

from torchship.artifact import Format
from torchship.errors import ModelLoadError
from torchship.loaded import flatten_outputs, to_torch_inputs
from torchship.runtimes.base import RUNNERS, Runner

__all__ = ["TorchRunner", "name_outputs"]

log = logging.getLogger(__name__)


def name_outputs(names: Sequence[str], arrays: Sequence[np.ndarray]) -> dict[str, np.ndarray]:
    """Pair outputs with their names; without names use `output` / `output_{i}`."""
    if not names:
        if len(arrays) == 1:
            return {"output": arrays[0]}
        return {f"output_{i}": a for i, a in enumerate(arrays)}
    if len(names) != len(arrays):
        raise ModelLoadError(
            f"model returned {len(arrays)} outputs, the artifact describes {len(names)}: "
            f"{', '.join(names)}"
        )
    return dict(zip(names, arrays))


class _ThreadsMixin:
    """Applies `threads` with torch.set_num_threads and restores the previous value."""

    threads: int | None
    _previous_threads: int | None = None

    def _apply_threads(self) -> None:
        if self.threads is not None:
            self._previous_threads = torch.get_num_threads()
            torch.set_num_threads(self.threads)

    def _restore_threads(self) -> None:
        if self._previous_threads is not None:
            torch.set_num_threads(self._previous_threads)
            self._previous_threads = None


@RUNNERS.register("torch")
class TorchRunner(_ThreadsMixin, Runner):
    """Eager PyTorch: `Format.EAGER` modules and `Format.EXPORTED_PROGRAM` files."""

    name = "torch"
    formats = (Format.EAGER, Format.EXPORTED_PROGRAM)

    @classmethod
    def unavailable_reason(cls) -> str | None:
        return None

    def _load(self) -> None:
        if self.artifact.format is Format.EAGER:
            module = self.artifact.module
            if not isinstance(module, torch.nn.Module):
                raise ModelLoadError(
                    f"eager artifact holds a {type(module).__name__}, expected a torch.nn.Module"
                )
            module.eval()
        else:
            module = _load_exported_program(self.artifact.path)
        self._module = module
        self._apply_threads()

    def _infer(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        with torch.inference_mode():
            result = self._module(*to_torch_inputs(self.inputs, dict(feeds)))
        return name_outputs(self.artifact.outputs, flatten_outputs(result))

    def _close(self) -> None:
        self._module = None
        self._restore_threads()


def _load_exported_program(path) -> torch.nn.Module:
    # The unlifted module refuses .eval()/.train(); torch.export already traced it in eval mode.
    try:
        return torch.export.load(path).module()
    except Exception as exc:  # torch raises many types for a bad archive
        raise ModelLoadError(f"{path}: not a loadable torch.export archive ({exc})") from exc
