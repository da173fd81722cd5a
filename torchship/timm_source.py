"""`timm:NAME` model sources: a timm architecture, random-init or with `--weights` (no download)."""

from __future__ import annotations

import torch

from torchship.errors import BackendUnavailableError, ConfigError, first_line
from torchship.specs import InputSpec

__all__ = ["build_timm"]


def build_timm(source: str) -> tuple[torch.nn.Module, tuple[InputSpec, ...]]:
    """The timm model `source` names (pretrained=False: weights come only from --weights) and
    its image input from the model's pretrained config. BackendUnavailableError (exit 3) when
    timm does not import (it needs a torchvision built for this torch)."""
    name = source.removeprefix("timm:")
    if not name:
        raise ConfigError("timm: needs a model name, e.g. timm:resnet18")
    try:
        import timm
    except Exception as exc:  # timm imports torchvision, which may not load beside this torch
        raise BackendUnavailableError(
            f"{source}: timm does not import ({first_line(exc, limit=200)}); "
            "pip install 'torchship[timm]' with a torchvision built for this torch"
        ) from None
    if not timm.is_model(name):
        raise ConfigError(f"{source}: timm has no model {name!r} (see timm.list_models())")
    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False)
    size = tuple(model.pretrained_cfg.get("input_size", (3, 224, 224)))
    spec = InputSpec(name="image", dtype="float32", shape=(2, *size), dynamic={0: "batch"})
    return model, (spec,)
