"""Small model factories for examples and tests, usable as `torchship.models.zoo:NAME` sources.

Weights are random but fixed (seeded, no downloads); `zoo_inputs(NAME)` gives matching specs.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from torchship.errors import ConfigError
from torchship.models.demo import make_stages
from torchship.models.mobile import MobileNetV2Style, MobileNetV3Style
from torchship.specs import InputSpec

__all__ = [
    "ZOO",
    "EncoderBlock",
    "ResNet18Style",
    "TinyEncoder",
    "mobilenet_v2_style",
    "mobilenet_v3_style",
    "resnet18_style",
    "tiny_encoder",
    "zoo_inputs",
]

_SEED = 0


class ResNet18Style(nn.Module):
    """ResNet-18 layout (BasicBlocks [2, 2, 2, 2], widths 64..512): image [b, 3, H, W] -> logits."""

    def __init__(self, *, num_classes: int = 1000) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False),
            nn.BatchNorm2d(64),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(3, stride=2, padding=1),
        )
        self.stages = make_stages(64, (64, 128, 256, 512), (2, 2, 2, 2))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(512, num_classes)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        x = self.stages(self.stem(image))
        return self.fc(torch.flatten(self.pool(x), 1))


class EncoderBlock(nn.Module):
    """Post-norm transformer encoder layer (as nn.TransformerEncoderLayer, ReLU, no dropout).

    Written out explicitly: nn.MultiheadAttention's fast path bakes batch and sequence sizes
    into a traced (legacy) ONNX export, which then fails on any other shape.
    """

    def __init__(self, d_model: int, nhead: int, *, ffn: int) -> None:
        super().__init__()
        if d_model % nhead:
            raise ConfigError(f"EncoderBlock: d_model {d_model} is not divisible by nhead {nhead}")
        self.nhead, self.head_dim = nhead, d_model // nhead
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.out = nn.Linear(d_model, d_model)
        self.norm1 = nn.LayerNorm(d_model)
        self.ffn = nn.Sequential(nn.Linear(d_model, ffn), nn.ReLU(), nn.Linear(ffn, d_model))
        self.norm2 = nn.LayerNorm(d_model)

    def forward(self, x: torch.Tensor, key_bias: torch.Tensor) -> torch.Tensor:
        """x [b, s, d]; key_bias [b, 1, 1, s] added to the attention scores."""
        # [b, s, 3d] -> 3 x [b, h, s, head_dim]; only constant sizes, so dynamic shapes trace.
        q, k, v = (
            self.qkv(x)
            .unflatten(-1, (3, self.nhead, self.head_dim))
            .permute(2, 0, 3, 1, 4)
            .unbind(0)
        )
        scores = torch.matmul(q, k.transpose(-2, -1)) * self.head_dim**-0.5 + key_bias
        attended = torch.matmul(scores.softmax(dim=-1), v).transpose(1, 2).flatten(2)
        x = self.norm1(x + self.out(attended))
        return self.norm2(x + self.ffn(x))


class TinyEncoder(nn.Module):
    """Token classifier: embedding + transformer encoder blocks + masked mean pool + linear.

    `attention_mask` is int64 with 1 = keep, 0 = padding (as Hugging Face tokenizers give it).
    """

    def __init__(
        self,
        *,
        vocab: int = 1000,
        d_model: int = 64,
        nhead: int = 4,
        layers: int = 2,
        num_classes: int = 2,
    ) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, d_model)
        self.blocks = nn.ModuleList(
            EncoderBlock(d_model, nhead, ffn=4 * d_model) for _ in range(layers)
        )
        self.head = nn.Linear(d_model, num_classes)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        x = self.embed(input_ids)
        keep = attention_mask.to(x.dtype)
        # Additive bias for padded keys: enough to zero the softmax, finite in fp16 (no NaN when
        # a row is all padding). A literal, since TorchScript cannot read float globals.
        key_bias = ((1.0 - keep) * -1e4)[:, None, None, :]
        for block in self.blocks:
            x = block(x, key_bias)
        weights = keep.unsqueeze(-1)
        return self.head((x * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1.0))


def _seeded(build: Callable[[], nn.Module]) -> nn.Module:
    # fork_rng keeps the caller's global RNG state untouched.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(_SEED)
        return build().eval()


def resnet18_style(num_classes: int = 1000) -> ResNet18Style:
    """A ResNet-18-style CNN for 3x64x64 images, seeded random weights, eval mode."""
    if num_classes < 1:
        raise ConfigError(f"resnet18_style: num_classes {num_classes} must be >= 1")
    return _seeded(lambda: ResNet18Style(num_classes=num_classes))  # type: ignore[return-value]


def tiny_encoder() -> TinyEncoder:
    """A 2-layer transformer encoder classifier (vocab 1000, d 64), seeded weights, eval mode."""
    return _seeded(TinyEncoder)  # type: ignore[return-value]


def mobilenet_v2_style() -> MobileNetV2Style:
    """A MobileNetV2-style CNN for 3x64x64 images (10 classes), seeded weights, eval mode."""
    return _seeded(MobileNetV2Style)  # type: ignore[return-value]


def mobilenet_v3_style() -> MobileNetV3Style:
    """A MobileNetV3-style CNN (hardswish, squeeze-excite) for 3x64x64 images, 10 classes."""
    return _seeded(MobileNetV3Style)  # type: ignore[return-value]


ZOO: dict[str, Callable[[], nn.Module]] = {
    "resnet18_style": resnet18_style,
    "tiny_encoder": tiny_encoder,
    "mobilenet_v2_style": mobilenet_v2_style,
    "mobilenet_v3_style": mobilenet_v3_style,
}

_IMAGE_64 = (InputSpec("image", "float32", (1, 3, 64, 64), dynamic={0: "batch"}),)
_INPUTS: dict[str, tuple[InputSpec, ...]] = {
    "resnet18_style": _IMAGE_64,
    "mobilenet_v2_style": _IMAGE_64,
    "mobilenet_v3_style": _IMAGE_64,
    "tiny_encoder": (
        InputSpec(
            "input_ids", "int64", (2, 16), dynamic={0: "batch", 1: "seq"}, value_range=(0, 1000)
        ),
        InputSpec(
            "attention_mask", "int64", (2, 16), dynamic={0: "batch", 1: "seq"}, value_range=(0, 2)
        ),
    ),
}


def zoo_inputs(name: str) -> tuple[InputSpec, ...]:
    """Input specs that fit the zoo model `name` (example shapes, dynamic dims, value ranges)."""
    if name not in _INPUTS:
        raise ConfigError(f"unknown zoo model {name!r}; valid: {', '.join(_INPUTS)}")
    return _INPUTS[name]


# Model sources (`torchship.models.zoo:NAME`) read default inputs from this attribute.
for _name, _factory in ZOO.items():
    _factory.torchship_inputs = _INPUTS[_name]  # type: ignore[attr-defined]
