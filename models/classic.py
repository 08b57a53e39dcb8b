"""Classic families of the zoo: DenseNet, Inception and VGG."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .blocks import conv_bn

# --------------------------------------------------------------------------------------------
# DenseNet
# --------------------------------------------------------------------------------------------


class DenseLayer(nn.Module):
    """Pre-activation BN-ReLU-1x1 -> BN-ReLU-3x3, output concatenated onto all inputs.

    The leading BatchNorm sits *after* a concat and *before* ReLU, so it cannot be folded
    into a conv: it survives export as a BatchNormalization (or Mul/Add) node.
    """

    def __init__(self, cin: int, growth: int, bottleneck: int = 4) -> None:
        super().__init__()
        self.norm1 = nn.BatchNorm2d(cin)
        self.conv1 = nn.Conv2d(cin, bottleneck * growth, 1, bias=False)
        self.norm2 = nn.BatchNorm2d(bottleneck * growth)
        self.conv2 = nn.Conv2d(bottleneck * growth, growth, 3, 1, 1, bias=False)

    def forward(self, features: list[Tensor]) -> Tensor:
        x = torch.cat(features, 1)
        x = self.conv1(F.relu(self.norm1(x)))
        return self.conv2(F.relu(self.norm2(x)))


class DenseBlock(nn.Module):
    """A list of dense layers; every layer sees the concat of the block input and all outputs."""

    def __init__(self, cin: int, layers: int, growth: int) -> None:
        super().__init__()
        self.layers = nn.ModuleList(DenseLayer(cin + i * growth, growth) for i in range(layers))

    def forward(self, x: Tensor) -> Tensor:
        features = [x]
        for layer in self.layers:
            features.append(layer(features))
        return torch.cat(features, 1)


def densenet() -> nn.Module:
    """DenseNet-121 structure, growth 8, 3 blocks of 3/4/3 layers with transitions."""
    growth, cin = 8, 16
    layers: list[nn.Module] = [
        nn.Conv2d(3, cin, 7, 2, 3, bias=False),
        nn.BatchNorm2d(cin),
        nn.ReLU(),
        nn.MaxPool2d(3, 2, 1),
    ]
    for index, count in enumerate([3, 4, 3]):
        layers.append(DenseBlock(cin, count, growth))
        cin += count * growth
        if index != 2:
            cout = cin // 2
            layers += [
                nn.BatchNorm2d(cin),
                nn.ReLU(),
                nn.Conv2d(cin, cout, 1, bias=False),
                nn.AvgPool2d(2, 2),
            ]
            cin = cout
    layers.append(nn.BatchNorm2d(cin))

    class DenseNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.features = nn.Sequential(*layers)
            self.classifier = nn.Linear(cin, 1000)

        def forward(self, x: Tensor) -> Tensor:
            x = F.adaptive_avg_pool2d(F.relu(self.features(x)), 1)
            return self.classifier(torch.flatten(x, 1))

    return DenseNet()


# --------------------------------------------------------------------------------------------
# Inception
# --------------------------------------------------------------------------------------------


class InceptionModule(nn.Module):
    """GoogLeNet module: 1x1 | 1x1->3x3 | 1x1->3x3->3x3 | pool->1x1, concatenated."""

    def __init__(
        self,
        cin: int,
        c1: int,
        c3r: int,
        c3: int,
        c5r: int,
        c5: int,
        pool_proj: int,
        avg_pool: bool = False,
    ) -> None:
        super().__init__()
        self.branch1 = conv_bn(cin, c1, 1)
        self.branch2 = nn.Sequential(conv_bn(cin, c3r, 1), conv_bn(c3r, c3, 3))
        self.branch3 = nn.Sequential(conv_bn(cin, c5r, 1), conv_bn(c5r, c5, 3), conv_bn(c5, c5, 3))
        pool: nn.Module = (
            nn.AvgPool2d(3, 1, 1, count_include_pad=False)
            if avg_pool
            else nn.MaxPool2d(3, 1, 1, ceil_mode=True)
        )
        self.branch4 = nn.Sequential(pool, conv_bn(cin, pool_proj, 1))

    def forward(self, x: Tensor) -> Tensor:
        branches = [self.branch1(x), self.branch2(x), self.branch3(x), self.branch4(x)]
        return torch.cat(branches, 1)


def inception() -> nn.Module:
    """GoogLeNet-like stem and three inception modules (max- and avg-pool branches)."""

    class Inception(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.stem = nn.Sequential(
                conv_bn(3, 16, 7, 2),
                nn.MaxPool2d(3, 2, ceil_mode=True),
                conv_bn(16, 16, 1),
                conv_bn(16, 32, 3),
            )
            self.mixed_a = InceptionModule(32, 16, 16, 24, 4, 8, 8)
            self.mixed_b = InceptionModule(56, 24, 24, 32, 8, 16, 16, avg_pool=True)
            self.pool = nn.MaxPool2d(3, 2, ceil_mode=True)
            self.mixed_c = InceptionModule(88, 32, 16, 32, 8, 16, 16)
            self.fc = nn.Linear(96, 1000)

        def forward(self, x: Tensor) -> Tensor:
            x = self.mixed_b(self.mixed_a(self.stem(x)))
            x = self.mixed_c(self.pool(x))
            return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))

    return Inception()


# --------------------------------------------------------------------------------------------
# VGG
# --------------------------------------------------------------------------------------------


def vgg() -> nn.Module:
    """VGG-11-BN layout at 1/8 width: convs + maxpools, then flatten -> Linear -> ReLU -> Linear.

    The flatten turns each of the last conv's channels into 2x2=4 consecutive Linear inputs.
    """
    config: list[int | str] = [8, "M", 16, "M", 32, 32, "M", 64, 64, "M", 64, 64, "M"]
    layers: list[nn.Module] = []
    cin = 3
    for item in config:
        if item == "M":
            layers.append(nn.MaxPool2d(2, 2))
        else:
            assert isinstance(item, int)
            layers.append(conv_bn(cin, item, 3))
            cin = item

    class VGG(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.features = nn.Sequential(*layers)
            self.classifier = nn.Sequential(
                nn.Linear(cin * 2 * 2, 128), nn.ReLU(), nn.Dropout(0.5), nn.Linear(128, 10)
            )

        def forward(self, x: Tensor) -> Tensor:
            return self.classifier(torch.flatten(self.features(x), 1))

    return VGG()
