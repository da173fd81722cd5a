"""MobileNetV2- and MobileNetV3-style CNNs (inverted residuals; V3 adds hardswish and
squeeze-excite gates), sized for 3x64x64 images: the nets where the best runtime differs.
"""

from __future__ import annotations

from torch import nn

__all__ = ["MobileNetV2Style", "MobileNetV3Style"]


def _conv_bn(cin: int, cout: int, kernel: int, *, stride: int = 1, groups: int = 1) -> list:
    padding = kernel // 2
    conv = nn.Conv2d(cin, cout, kernel, stride, padding, groups=groups, bias=False)
    return [conv, nn.BatchNorm2d(cout)]


class SqueezeExcite(nn.Module):
    """Channel gate: global pool -> 1x1 reduce -> ReLU -> 1x1 expand -> hardsigmoid -> scale."""

    def __init__(self, channels: int, *, reduce: int = 4) -> None:
        super().__init__()
        hidden = max(8, channels // reduce)
        self.gate = nn.Sequential(
            nn.AdaptiveAvgPool2d(1),
            nn.Conv2d(channels, hidden, 1),
            nn.ReLU(),
            nn.Conv2d(hidden, channels, 1),
            nn.Hardsigmoid(),
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
    ) -> None:
        super().__init__()
        hidden = cin * expand
        layers: list[nn.Module] = []
        if expand != 1:
            layers += [*_conv_bn(cin, hidden, 1), act()]
        layers += [*_conv_bn(hidden, hidden, kernel, stride=stride, groups=hidden), act()]
        if se:
            layers.append(SqueezeExcite(hidden))
        layers += _conv_bn(hidden, cout, 1)
        self.body = nn.Sequential(*layers)
        self.residual = stride == 1 and cin == cout

    def forward(self, x):
        out = self.body(x)
        return x + out if self.residual else out


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

    def __init__(self, *, num_classes: int = 10) -> None:
        super().__init__()
        layers: list[nn.Module] = [*_conv_bn(3, 24, 3, stride=2), nn.ReLU6()]
        cin = 24
        for expand, cout, repeats, stride in self.SETTINGS:
            for i in range(repeats):
                layers.append(
                    InvertedResidual(cin, cout, expand=expand, stride=stride if i == 0 else 1)
                )
                cin = cout
        self.features = nn.Sequential(*layers)
        self.head = _head(cin, 640, num_classes, nn.ReLU6)

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

    def __init__(self, *, num_classes: int = 10) -> None:
        super().__init__()
        layers: list[nn.Module] = [*_conv_bn(3, 16, 3, stride=2), nn.Hardswish()]
        cin = 16
        for kernel, expand, cout, se, hswish, stride in self.SETTINGS:
            act = nn.Hardswish if hswish else nn.ReLU
            layers.append(
                InvertedResidual(
                    cin, cout, expand=expand, stride=stride, kernel=kernel, act=act, se=se
                )
            )
            cin = cout
        self.features = nn.Sequential(*layers)
        self.head = _head(cin, 576, num_classes, nn.Hardswish)

    def forward(self, image):
        return self.head(self.features(image))
