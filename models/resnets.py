"""Residual families of the zoo: ResNet (basic, bottleneck), ResNeXt and RegNetY."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .blocks import SqueezeExcite, conv_bn

# --------------------------------------------------------------------------------------------
# ResNet family (basic, bottleneck, ResNeXt)
# --------------------------------------------------------------------------------------------


class BasicBlock(nn.Module):
    """Two 3x3 convs plus an identity or 1x1-projection shortcut."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample: nn.Module | None = None
        if stride != 1 or cin != cout:
            self.downsample = conv_bn(cin, cout, 1, stride, act=None)

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + identity)


class Bottleneck(nn.Module):
    """1x1 reduce -> 3x3 (optionally grouped) -> 1x1 expand, with shortcut (ResNet-50/ResNeXt).

    ``mid_out`` lets the grouped 3x3 change width, so a group can have different input and
    output channel counts.
    """

    def __init__(
        self, cin: int, mid: int, cout: int, stride: int, groups: int = 1, mid_out: int = 0
    ) -> None:
        super().__init__()
        mid_out = mid_out or mid
        self.conv1 = nn.Conv2d(cin, mid, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(mid)
        self.conv2 = nn.Conv2d(mid, mid_out, 3, stride, 1, groups=groups, bias=False)
        self.bn2 = nn.BatchNorm2d(mid_out)
        self.conv3 = nn.Conv2d(mid_out, cout, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(cout)
        self.downsample: nn.Module | None = None
        if stride != 1 or cin != cout:
            self.downsample = conv_bn(cin, cout, 1, stride, act=None)

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return F.relu(out + identity)


class ResNet(nn.Module):
    """torchvision-shaped ResNet: 7x7 stem, maxpool, four stages, global pool, Linear."""

    def __init__(self, stem: int, stages: list[nn.Module], features: int, classes: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, stem, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(stem)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        self.layers = nn.Sequential(*stages)
        self.fc = nn.Linear(features, classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.maxpool(F.relu(self.bn1(self.conv1(x))))
        x = self.layers(x)
        x = torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)
        return self.fc(x)


def _basic_stages(stem: int, widths: list[int], depths: list[int]) -> list[nn.Module]:
    stages: list[nn.Module] = []
    cin = stem
    for index, (width, depth) in enumerate(zip(widths, depths, strict=True)):
        blocks = []
        for block in range(depth):
            stride = 2 if index > 0 and block == 0 else 1
            blocks.append(BasicBlock(cin, width, stride))
            cin = width
        stages.append(nn.Sequential(*blocks))
    return stages


def resnet18() -> nn.Module:
    """Real ResNet-18 widths and depths (11.7M params), 1000 classes."""
    return ResNet(64, _basic_stages(64, [64, 128, 256, 512], [2, 2, 2, 2]), 512, 1000)


def resnet_tiny() -> nn.Module:
    """Three-stage basic-block ResNet (widths 16-64, 10 classes) used as the README example."""

    class TinyResNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.stem = conv_bn(3, 16, 3)
            self.layers = nn.Sequential(*_basic_stages(16, [16, 32, 64], [2, 1, 1]))
            self.fc = nn.Linear(64, 10)

        def forward(self, x: Tensor) -> Tensor:
            x = self.layers(self.stem(x))
            return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))

    return TinyResNet()


def resnet_bottleneck() -> nn.Module:
    """ResNet-50-style bottlenecks (expansion 4), narrow: widths 8..64, depths 2,1,1,1."""
    stages: list[nn.Module] = []
    cin = 16
    for index, (mid, depth) in enumerate(zip([8, 16, 32, 64], [2, 1, 1, 1], strict=True)):
        blocks = []
        for block in range(depth):
            stride = 2 if index > 0 and block == 0 else 1
            blocks.append(Bottleneck(cin, mid, mid * 4, stride))
            cin = mid * 4
        stages.append(nn.Sequential(*blocks))
    return ResNet(16, stages, cin, 100)


def resnext() -> nn.Module:
    """ResNeXt bottlenecks with an 8-group 3x3; the first block of each stage widens inside
    the grouped conv (4 -> 8 channels per group), the others keep in == out per group."""
    stages: list[nn.Module] = []
    cin = 16
    for index, mid in enumerate([32, 64, 128]):
        stride = 1 if index == 0 else 2
        first = Bottleneck(cin, mid // 2, mid * 2, stride, groups=8, mid_out=mid)
        second = Bottleneck(mid * 2, mid, mid * 2, 1, groups=8)
        stages.append(nn.Sequential(first, second))
        cin = mid * 2
    return ResNet(16, stages, cin, 100)


# --------------------------------------------------------------------------------------------
# RegNetY
# --------------------------------------------------------------------------------------------


class RegNetBlock(nn.Module):
    """RegNetY block: 1x1 -> grouped 3x3 (fixed group width) -> SE -> 1x1, plus shortcut."""

    def __init__(self, cin: int, cout: int, stride: int, group_width: int) -> None:
        super().__init__()
        self.a = conv_bn(cin, cout, 1)
        self.b = conv_bn(cout, cout, 3, stride, groups=cout // group_width)
        self.se = SqueezeExcite(cout, max(1, cin // 4))
        self.c = conv_bn(cout, cout, 1, act=None)
        self.proj: nn.Module | None = None
        if stride != 1 or cin != cout:
            self.proj = conv_bn(cin, cout, 1, stride, act=None)

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.proj is None else self.proj(x)
        return F.relu(self.c(self.se(self.b(self.a(x)))) + identity)


def regnet() -> nn.Module:
    """RegNetY-200MF-like: widths 24/56/152/368 narrowed, group width 8."""
    widths, depths = [16, 32, 64, 128], [1, 2, 2, 1]
    layers: list[nn.Module] = [conv_bn(3, 16, 3, 2)]
    cin = 16
    for width, depth in zip(widths, depths, strict=True):
        for index in range(depth):
            layers.append(RegNetBlock(cin, width, 2 if index == 0 else 1, 8))
            cin = width

    class RegNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.trunk = nn.Sequential(*layers)
            self.fc = nn.Linear(cin, 1000)

        def forward(self, x: Tensor) -> Tensor:
            x = F.adaptive_avg_pool2d(self.trunk(x), 1)
            return self.fc(torch.flatten(x, 1))

    return RegNet()
