"""MobileNetV2-, MobileNetV3- and EfficientNet-style CNNs (inverted residuals; V3 adds
hardswish and hard-sigmoid squeeze-excite gates, EfficientNet SiLU and sigmoid gates), sized for
3x64x64 images: the nets where the best runtime differs, and where INT8 can run slower than FP32.
"""

from __future__ import annotations

from torch import nn

__all__ = ["EfficientNetStyle", "MobileNetV2Style", "MobileNetV3Style"]


def _conv_bn(cin: int, cout: int, kernel: int, *, stride: int = 1, groups: int = 1) -> list:
    padding = kernel // 2
    conv = nn.Conv2d(cin, cout, kernel, stride, padding, groups=groups, bias=False)
    return [conv, nn.BatchNorm2d(cout)]


class SqueezeExcite(nn.Module):
    """Channel gate: global pool -> 1x1 reduce -> ReLU -> 1x1 expand -> hardsigmoid -> scale."""

    def __init__(
        self,
        channels: int,
        *,
        reduce: int = 4,
        act: type[nn.Module] = nn.ReLU,
        gate: type[nn.Module] = nn.Hardsigmoid,
    ) -> None:
        super().__init__()
        hidden = max(8, channels // reduce)
        self.gate = nn.Sequential(
            nn.AdaptiveAvgPool2d(1),
            nn.Conv2d(channels, hidden, 1),
            act(),
            nn.Conv2d(hidden, channels, 1),
            gate(),
        )

    def forward(self, x):
        return x * self.gate(x)


class InvertedResidual(nn.Module):
    """1x1 expand -> depthwise kxk -> (squeeze-excite) -> 1x1 project; identity when it fits."""

    def __init__(
        self,
        cin: int,
        cout: int,
        *,
        expand: int,
        stride: int,
        kernel: int = 3,
        act: type[nn.Module] = nn.ReLU6,
        se: bool = False,
        se_gate: type[nn.Module] = nn.Hardsigmoid,
        se_act: type[nn.Module] = nn.ReLU,
    ) -> None:
        super().__init__()
        hidden = cin * expand
        layers: list[nn.Module] = []
        if expand != 1:
            layers += [*_conv_bn(cin, hidden, 1), act()]
        layers += [*_conv_bn(hidden, hidden, kernel, stride=stride, groups=hidden), act()]
        if se:
            layers.append(SqueezeExcite(hidden, act=se_act, gate=se_gate))
        layers += _conv_bn(hidden, cout, 1)
        self.body = nn.Sequential(*layers)
        self.residual = stride == 1 and cin == cout

    def forward(self, x):
        out = self.body(x)
        return x + out if self.residual else out


def _width(channels: int, width: float) -> int:
    """Channels scaled by the width multiplier, rounded to a multiple of 8 (as MobileNets do)."""
    return max(8, int(channels * width + 4) // 8 * 8)


def _head(cin: int, width: int, num_classes: int, act: type[nn.Module]) -> nn.Sequential:
    return nn.Sequential(
        *_conv_bn(cin, width, 1),
        act(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(width, num_classes),
    )


class MobileNetV2Style(nn.Module):
    """MobileNetV2 layout at width 0.75 (ReLU6, inverted residuals): image [b, 3, 64, 64]."""

    #: (expand, channels, repeats, first stride)
    SETTINGS = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 3, 2), (6, 96, 2, 1))

    def __init__(self, *, num_classes: int = 10, width: float = 1.0, in_channels: int = 3) -> None:
        super().__init__()
        cin = _width(24, width)
        layers: list[nn.Module] = [*_conv_bn(in_channels, cin, 3, stride=2), nn.ReLU6()]
        for expand, cout, repeats, stride in self.SETTINGS:
            cout = _width(cout, width)
            for i in range(repeats):
                layers.append(
                    InvertedResidual(cin, cout, expand=expand, stride=stride if i == 0 else 1)
                )
                cin = cout
        self.features = nn.Sequential(*layers)
        self.head = _head(cin, _width(640, width), num_classes, nn.ReLU6)

    def forward(self, image):
        return self.head(self.features(image))


class MobileNetV3Style(nn.Module):
    """MobileNetV3-Small layout (hardswish, squeeze-excite, 5x5 depthwise): image [b, 3, 64, 64]."""

    #: (kernel, expand, channels, squeeze-excite, hardswish, stride)
    SETTINGS = (
        (3, 1, 16, True, False, 2),
        (3, 4, 24, False, False, 2),
        (3, 3, 24, False, False, 1),
        (5, 4, 40, True, True, 2),
        (5, 6, 40, True, True, 1),
        (5, 3, 48, True, True, 1),
        (5, 6, 96, True, True, 2),
        (5, 6, 96, True, True, 1),
    )

    def __init__(self, *, num_classes: int = 10, width: float = 1.0, in_channels: int = 3) -> None:
        super().__init__()
        cin = _width(16, width)
        layers: list[nn.Module] = [*_conv_bn(in_channels, cin, 3, stride=2), nn.Hardswish()]
        for kernel, expand, cout, se, hswish, stride in self.SETTINGS:
            cout = _width(cout, width)
            act = nn.Hardswish if hswish else nn.ReLU
            layers.append(
                InvertedResidual(
                    cin, cout, expand=expand, stride=stride, kernel=kernel, act=act, se=se
                )
            )
            cin = cout
        self.features = nn.Sequential(*layers)
        self.head = _head(cin, _width(576, width), num_classes, nn.Hardswish)

    def forward(self, image):
        return self.head(self.features(image))


class EfficientNetStyle(nn.Module):
    """EfficientNet-B0 layout, shortened (MBConv: SiLU, squeeze-excite with SiLU and sigmoid
    gates, 3x3/5x5 depthwise): image [b, 3, 64, 64]."""

    #: (kernel, expand, channels, repeats, first stride)
    SETTINGS = ((3, 1, 16, 1, 1), (3, 6, 24, 2, 2), (5, 6, 40, 2, 2), (3, 6, 80, 2, 2),
                (5, 6, 112, 1, 1))  # fmt: skip

    def __init__(self, *, num_classes: int = 10, width: float = 1.0, in_channels: int = 3) -> None:
        super().__init__()
        cin = _width(32, width)
        layers: list[nn.Module] = [*_conv_bn(in_channels, cin, 3, stride=2), nn.SiLU()]
        for kernel, expand, cout, repeats, stride in self.SETTINGS:
            cout = _width(cout, width)
            for i in range(repeats):
                layers.append(
                    InvertedResidual(
                        cin,
                        cout,
                        expand=expand,
                        stride=stride if i == 0 else 1,
                        kernel=kernel,
                        act=nn.SiLU,
                        se=True,
                        se_gate=nn.Sigmoid,
                        se_act=nn.SiLU,
                    )  # fmt: skip
                )
                cin = cout
        self.features = nn.Sequential(*layers)
        self.head = _head(cin, _width(640, width), num_classes, nn.SiLU)

    def forward(self, image):
        return self.head(self.features(image))
