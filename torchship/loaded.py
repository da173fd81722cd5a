"""`LoadedModel`: an nn.Module with its input specs, output names and provenance."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from torchship.artifact import Artifact
from torchship.specs import InputSpec, random_feeds

__all__ = ["LoadedModel", "eval_mode", "to_torch_inputs", "flatten_outputs"]


@dataclass
class LoadedModel:
    """A model ready to export. `example` holds one input per spec (numpy, by name)."""

    module: torch.nn.Module
    inputs: tuple[InputSpec, ...]
    outputs: tuple[str, ...]
    source: str
    weights_sha256: str | None = None
    example: dict[str, np.ndarray] = field(default_factory=dict)
    #: what the first output holds, when the source says (`hf:` --task: "feature-extraction"...)
    task: str | None = None

    def __post_init__(self) -> None:
        self.inputs = tuple(self.inputs)
        self.outputs = tuple(self.outputs)
        if not self.example:
            self.example = random_feeds(self.inputs, seed=0)

    def eager(self) -> Artifact:
        return Artifact.eager(self.module, inputs=self.inputs, outputs=self.outputs)

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Eager forward pass on numpy feeds, outputs by name."""
        with torch.inference_mode():
            result = self.module(*to_torch_inputs(self.inputs, feeds))
        return dict(zip(self.outputs, flatten_outputs(result), strict=True))


def eval_mode(module: torch.nn.Module) -> torch.nn.Module:
    """`module`, switched to eval mode; returns it for chaining.

    The module of a loaded torch.export program refuses `.eval()` (NotImplementedError); its
    train/eval behaviour was fixed when it was exported, so it is returned as it is.
    """
    if isinstance(module, torch.fx.GraphModule):
        try:
            return module.eval()
        except NotImplementedError:
            return module
    return module.eval()


def to_torch_inputs(specs: Sequence[InputSpec], feeds: dict[str, np.ndarray]) -> tuple:
    # asarray, not ascontiguousarray: that turns a scalar (0-d) input into shape (1,)
    return tuple(torch.from_numpy(np.asarray(feeds[s.name], order="C")) for s in specs)


def flatten_outputs(result: object) -> list[np.ndarray]:
    """Model outputs (tensor, tuple/list, dict) as a flat list of numpy arrays."""
    if isinstance(result, torch.Tensor):
        return [result.detach().cpu().numpy()]
    if isinstance(result, dict):
        return [a for v in result.values() for a in flatten_outputs(v)]
    if isinstance(result, (tuple, list)):
        return [a for v in result for a in flatten_outputs(v)]
    raise TypeError(f"model output of type {type(result).__name__} is not a tensor")
