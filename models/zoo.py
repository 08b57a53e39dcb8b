"""Small, structurally faithful PyTorch definitions of common architectures.

The models are deliberately narrow so that exporting them and running them in onnxruntime
is fast, but each keeps the graph patterns that make pruning hard in its real counterpart
(residual adds, grouped and depthwise convs, squeeze-excitation, concats, channel splits and
shuffles, slices, flatten into Linear, channels-last LayerNorm, ...). No torchvision.
"""

from __future__ import annotations

import itertools
import math
import zlib
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# --------------------------------------------------------------------------------------------
# Shared pieces
# --------------------------------------------------------------------------------------------


def conv_bn(
    cin: int,
    cout: int,
    kernel: int = 3,
    stride: int = 1,
    groups: int = 1,
    act: type[nn.Module] | None = nn.ReLU,
) -> nn.Sequential:
    """Conv (no bias) + BatchNorm (+ activation): the unit both exporters fold into one Conv."""
    layers: list[nn.Module] = [
        nn.Conv2d(cin, cout, kernel, stride, kernel // 2, groups=groups, bias=False),
        nn.BatchNorm2d(cout),
    ]
    if act is not None:
        layers.append(act())
    return nn.Sequential(*layers)


def make_divisible(value: float, divisor: int = 8) -> int:
    """Round channel counts the way MobileNet/EfficientNet do (never down by more than 10%)."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * value:
        rounded += divisor
    return rounded


class SqueezeExcite(nn.Module):
    """Global pool -> 1x1 reduce -> act -> 1x1 expand -> gate, multiplied back onto the input."""

    def __init__(
        self,
        channels: int,
        squeeze: int,
        act: type[nn.Module] = nn.ReLU,
        gate: type[nn.Module] = nn.Sigmoid,
    ) -> None:
        super().__init__()
        self.fc1 = nn.Conv2d(channels, squeeze, 1)
        self.act = act()
        self.fc2 = nn.Conv2d(squeeze, channels, 1)
        self.gate = gate()

    def forward(self, x: Tensor) -> Tensor:
        scale = F.adaptive_avg_pool2d(x, 1)
        return x * self.gate(self.fc2(self.act(self.fc1(scale))))


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
# MobileNetV2 / V3, EfficientNet
# --------------------------------------------------------------------------------------------


class InvertedResidual(nn.Module):
    """MobileNetV2 block: 1x1 expand (ReLU6) -> 3x3 depthwise (ReLU6) -> 1x1 linear project."""

    def __init__(self, cin: int, cout: int, stride: int, expand: int) -> None:
        super().__init__()
        hidden = cin * expand
        layers: list[nn.Module] = []
        if expand != 1:
            layers.append(conv_bn(cin, hidden, 1, act=nn.ReLU6))
        layers += [
            conv_bn(hidden, hidden, 3, stride, groups=hidden, act=nn.ReLU6),
            conv_bn(hidden, cout, 1, act=None),
        ]
        self.conv = nn.Sequential(*layers)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: Tensor) -> Tensor:
        out = self.conv(x)
        return x + out if self.residual else out


def mobilenetv2() -> nn.Module:
    """MobileNetV2 at width 0.25 with one block per setting (plus a repeated residual block)."""
    # (expand, channels, repeats, stride) as in the paper, repeats reduced.
    settings = [
        (1, 16, 1, 1),
        (6, 24, 2, 2),
        (6, 32, 2, 2),
        (6, 64, 1, 2),
        (6, 96, 2, 1),
        (6, 160, 1, 2),
        (6, 320, 1, 1),
    ]
    width = 0.25
    cin = make_divisible(32 * width)
    layers: list[nn.Module] = [conv_bn(3, cin, 3, 2, act=nn.ReLU6)]
    for expand, channels, repeats, stride in settings:
        cout = make_divisible(channels * width)
        for index in range(repeats):
            layers.append(InvertedResidual(cin, cout, stride if index == 0 else 1, expand))
            cin = cout
    last = 320
    layers.append(conv_bn(cin, last, 1, act=nn.ReLU6))

    class MobileNetV2(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.features = nn.Sequential(*layers)
            self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(last, 1000))

        def forward(self, x: Tensor) -> Tensor:
            x = F.adaptive_avg_pool2d(self.features(x), 1)
            return self.classifier(torch.flatten(x, 1))

    return MobileNetV2()


class MobileNetV3Block(nn.Module):
    """MobileNetV3 bneck: optional expand, depthwise, optional SE (hardsigmoid), project."""

    def __init__(
        self, cin: int, kernel: int, hidden: int, cout: int, se: bool, act: str, stride: int
    ) -> None:
        super().__init__()
        activation: type[nn.Module] = nn.Hardswish if act == "HS" else nn.ReLU
        layers: list[nn.Module] = []
        if hidden != cin:
            layers.append(conv_bn(cin, hidden, 1, act=activation))
        layers.append(conv_bn(hidden, hidden, kernel, stride, groups=hidden, act=activation))
        if se:
            layers.append(SqueezeExcite(hidden, make_divisible(hidden // 4), gate=nn.Hardsigmoid))
        layers.append(conv_bn(hidden, cout, 1, act=None))
        self.block = nn.Sequential(*layers)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: Tensor) -> Tensor:
        out = self.block(x)
        return x + out if self.residual else out


def mobilenetv3() -> nn.Module:
    """MobileNetV3-Small layout at width 0.5 (hardswish, ReLU, SE with hardsigmoid)."""
    # (kernel, expanded, out, se, activation, stride) from MobileNetV3-Small.
    settings = [
        (3, 16, 16, True, "RE", 2),
        (3, 72, 24, False, "RE", 2),
        (3, 88, 24, False, "RE", 1),
        (5, 96, 40, True, "HS", 2),
        (5, 240, 40, True, "HS", 1),
        (5, 120, 48, True, "HS", 1),
        (5, 288, 96, True, "HS", 2),
        (5, 576, 96, True, "HS", 1),
    ]
    width = 0.5
    cin = make_divisible(16 * width)
    layers: list[nn.Module] = [conv_bn(3, cin, 3, 2, act=nn.Hardswish)]
    for kernel, hidden, cout, se, act, stride in settings:
        hidden, cout = make_divisible(hidden * width), make_divisible(cout * width)
        layers.append(MobileNetV3Block(cin, kernel, hidden, cout, se, act, stride))
        cin = cout
    last = 6 * cin
    layers.append(conv_bn(cin, last, 1, act=nn.Hardswish))

    class MobileNetV3(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.features = nn.Sequential(*layers)
            self.classifier = nn.Sequential(
                nn.Linear(last, 256), nn.Hardswish(), nn.Dropout(0.2), nn.Linear(256, 1000)
            )

        def forward(self, x: Tensor) -> Tensor:
            x = F.adaptive_avg_pool2d(self.features(x), 1)
            return self.classifier(torch.flatten(x, 1))

    return MobileNetV3()


class MBConv(nn.Module):
    """EfficientNet MBConv: expand (SiLU) -> depthwise (SiLU) -> SE (SiLU, sigmoid) -> project."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int, expand: int) -> None:
        super().__init__()
        hidden = cin * expand
        layers: list[nn.Module] = []
        if expand != 1:
            layers.append(conv_bn(cin, hidden, 1, act=nn.SiLU))
        layers += [
            conv_bn(hidden, hidden, kernel, stride, groups=hidden, act=nn.SiLU),
            SqueezeExcite(hidden, max(1, cin // 4), act=nn.SiLU),
            conv_bn(hidden, cout, 1, act=None),
        ]
        self.block = nn.Sequential(*layers)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: Tensor) -> Tensor:
        out = self.block(x)
        return x + out if self.residual else out


def efficientnet() -> nn.Module:
    """EfficientNet-B0 stage layout at width 0.25, one or two blocks per stage."""
    # (expand, kernel, stride, channels, repeats) from B0, repeats reduced.
    settings = [
        (1, 3, 1, 16, 1),
        (6, 3, 2, 24, 2),
        (6, 5, 2, 40, 1),
        (6, 3, 2, 80, 2),
        (6, 5, 1, 112, 1),
        (6, 5, 2, 192, 1),
        (6, 3, 1, 320, 1),
    ]
    width = 0.25
    cin = make_divisible(32 * width)
    layers: list[nn.Module] = [conv_bn(3, cin, 3, 2, act=nn.SiLU)]
    for expand, kernel, stride, channels, repeats in settings:
        cout = make_divisible(channels * width)
        for index in range(repeats):
            layers.append(MBConv(cin, cout, kernel, stride if index == 0 else 1, expand))
            cin = cout
    last = 4 * cin
    layers.append(conv_bn(cin, last, 1, act=nn.SiLU))

    class EfficientNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.features = nn.Sequential(*layers)
            self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(last, 1000))

        def forward(self, x: Tensor) -> Tensor:
            x = F.adaptive_avg_pool2d(self.features(x), 1)
            return self.classifier(torch.flatten(x, 1))

    return EfficientNet()


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
# ShuffleNetV2
# --------------------------------------------------------------------------------------------


def channel_shuffle(x: Tensor, groups: int) -> Tensor:
    """view -> transpose -> view, exactly as torchvision writes it."""
    batch, channels, height, width = x.size()
    x = x.view(batch, groups, channels // groups, height, width)
    x = torch.transpose(x, 1, 2).contiguous()
    return x.view(batch, -1, height, width)


class ShuffleUnit(nn.Module):
    """ShuffleNetV2 unit: stride 1 splits channels with chunk, stride 2 runs two branches."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.stride = stride
        half = cout // 2
        if stride > 1:
            self.branch1 = nn.Sequential(
                conv_bn(cin, cin, 3, stride, groups=cin, act=None), conv_bn(cin, half, 1)
            )
        else:
            self.branch1 = nn.Sequential()
        branch_in = cin if stride > 1 else half
        self.branch2 = nn.Sequential(
            conv_bn(branch_in, half, 1),
            conv_bn(half, half, 3, stride, groups=half, act=None),
            conv_bn(half, half, 1),
        )

    def forward(self, x: Tensor) -> Tensor:
        if self.stride == 1:
            x1, x2 = x.chunk(2, dim=1)
            out = torch.cat((x1, self.branch2(x2)), dim=1)
        else:
            out = torch.cat((self.branch1(x), self.branch2(x)), dim=1)
        return channel_shuffle(out, 2)


def shufflenetv2() -> nn.Module:
    """ShuffleNetV2 x0.5 channel layout with 2/2/1 units per stage."""
    widths, repeats = [48, 96, 192], [2, 2, 1]

    class ShuffleNetV2(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv1 = conv_bn(3, 24, 3, 2)
            self.maxpool = nn.MaxPool2d(3, 2, 1)
            units: list[nn.Module] = []
            cin = 24
            for width, count in zip(widths, repeats, strict=True):
                for index in range(count):
                    units.append(ShuffleUnit(cin, width, 2 if index == 0 else 1))
                    cin = width
            self.stages = nn.Sequential(*units)
            self.conv5 = conv_bn(cin, 256, 1)
            self.fc = nn.Linear(256, 1000)

        def forward(self, x: Tensor) -> Tensor:
            x = self.conv5(self.stages(self.maxpool(self.conv1(x))))
            return self.fc(x.mean([2, 3]))

    return ShuffleNetV2()


# --------------------------------------------------------------------------------------------
# GhostNet
# --------------------------------------------------------------------------------------------


def hard_sigmoid(x: Tensor) -> Tensor:
    """GhostNet's own hard sigmoid, written out (Add, Clip, Div) rather than HardSigmoid."""
    return F.relu6(x + 3.0) / 6.0


class GhostSE(nn.Module):
    """GhostNet SE: avgpool -> reduce -> ReLU -> expand -> hard_sigmoid gate."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        squeeze = make_divisible(channels * 0.25, 4)
        self.conv_reduce = nn.Conv2d(channels, squeeze, 1)
        self.conv_expand = nn.Conv2d(squeeze, channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        scale = self.conv_expand(F.relu(self.conv_reduce(F.adaptive_avg_pool2d(x, 1))))
        return x * hard_sigmoid(scale)


class GhostModule(nn.Module):
    """Primary 1x1 conv makes ceil(out/2) maps, a cheap depthwise 3x3 makes as many more from
    them; both are concatenated and sliced back to ``out`` channels (odd ``out`` drops one)."""

    def __init__(self, cin: int, out: int, relu: bool) -> None:
        super().__init__()
        self.out = out
        init = math.ceil(out / 2)
        act = nn.ReLU if relu else None
        self.primary_conv = conv_bn(cin, init, 1, act=act)
        self.cheap_operation = conv_bn(init, init, 3, groups=init, act=act)

    def forward(self, x: Tensor) -> Tensor:
        x1 = self.primary_conv(x)
        x2 = self.cheap_operation(x1)
        return torch.cat([x1, x2], dim=1)[:, : self.out, :, :]


class GhostBottleneck(nn.Module):
    """Ghost (ReLU) -> [depthwise stride 2] -> [SE] -> ghost (linear), plus shortcut."""

    def __init__(self, cin: int, mid: int, cout: int, kernel: int, stride: int, se: bool) -> None:
        super().__init__()
        self.ghost1 = GhostModule(cin, mid, relu=True)
        self.conv_dw: nn.Module | None = None
        if stride > 1:
            self.conv_dw = conv_bn(mid, mid, kernel, stride, groups=mid, act=None)
        self.se: nn.Module | None = GhostSE(mid) if se else None
        self.ghost2 = GhostModule(mid, cout, relu=False)
        self.shortcut: nn.Module = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(
                conv_bn(cin, cin, kernel, stride, groups=cin, act=None),
                conv_bn(cin, cout, 1, act=None),
            )

    def forward(self, x: Tensor) -> Tensor:
        out = self.ghost1(x)
        if self.conv_dw is not None:
            out = self.conv_dw(out)
        if self.se is not None:
            out = self.se(out)
        return self.ghost2(out) + self.shortcut(x)


def ghostnet() -> nn.Module:
    """GhostNet layout at width ~0.5; some widths are odd so the ghost slice really cuts."""
    # (kernel, mid, out, se, stride)
    settings = [
        (3, 16, 16, False, 1),
        (3, 36, 13, False, 2),
        (3, 36, 13, False, 1),
        (5, 36, 21, True, 2),
        (3, 120, 40, False, 2),
        (3, 92, 40, False, 1),
        (5, 336, 57, True, 1),
        (5, 480, 80, True, 2),
    ]
    layers: list[nn.Module] = [conv_bn(3, 8, 3, 2)]
    cin = 8
    for kernel, mid, cout, se, stride in settings:
        layers.append(GhostBottleneck(cin, mid // 2, cout, kernel, stride, se))
        cin = cout
    layers.append(conv_bn(cin, 240, 1))

    class GhostNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.blocks = nn.Sequential(*layers)
            self.conv_head = nn.Conv2d(240, 640, 1)
            self.classifier = nn.Linear(640, 1000)

        def forward(self, x: Tensor) -> Tensor:
            x = F.adaptive_avg_pool2d(self.blocks(x), 1)
            x = F.relu(self.conv_head(x))
            return self.classifier(x.view(x.size(0), -1))

    return GhostNet()


# --------------------------------------------------------------------------------------------
# YOLOv8
# --------------------------------------------------------------------------------------------


def yolo_conv(cin: int, cout: int, kernel: int = 1, stride: int = 1) -> nn.Sequential:
    """Ultralytics ``Conv``: conv + BN + SiLU."""
    return conv_bn(cin, cout, kernel, stride, act=nn.SiLU)


class YoloBottleneck(nn.Module):
    """Two 3x3 convs with an optional residual add."""

    def __init__(self, channels: int, shortcut: bool) -> None:
        super().__init__()
        self.cv1 = yolo_conv(channels, channels, 3)
        self.cv2 = yolo_conv(channels, channels, 3)
        self.add = shortcut

    def forward(self, x: Tensor) -> Tensor:
        out = self.cv2(self.cv1(x))
        return x + out if self.add else out


class C2f(nn.Module):
    """cv1 -> chunk(2) -> chain of bottlenecks on the second half -> concat all -> cv2."""

    def __init__(self, cin: int, cout: int, n: int, shortcut: bool) -> None:
        super().__init__()
        self.c = cout // 2
        self.cv1 = yolo_conv(cin, 2 * self.c)
        self.cv2 = yolo_conv((2 + n) * self.c, cout)
        self.m = nn.ModuleList(YoloBottleneck(self.c, shortcut) for _ in range(n))

    def forward(self, x: Tensor) -> Tensor:
        y = list(self.cv1(x).chunk(2, 1))
        y.extend(m(y[-1]) for m in self.m)
        return self.cv2(torch.cat(y, 1))


class SPPF(nn.Module):
    """cv1 -> three chained 5x5 max pools -> concat of all four -> cv2."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        hidden = cin // 2
        self.cv1 = yolo_conv(cin, hidden)
        self.cv2 = yolo_conv(hidden * 4, cout)
        self.m = nn.MaxPool2d(5, 1, 2)

    def forward(self, x: Tensor) -> Tensor:
        y = [self.cv1(x)]
        y.extend(self.m(y[-1]) for _ in range(3))
        return self.cv2(torch.cat(y, 1))


class Detect(nn.Module):
    """YOLOv8 anchor-free head: per level box (4*reg_max) and class branches, concatenated,
    flattened over space, DFL-decoded into xywh boxes and concatenated with class sigmoids."""

    def __init__(self, classes: int, channels: tuple[int, ...], strides: tuple[int, ...]) -> None:
        super().__init__()
        self.nc, self.reg_max = classes, 16
        self.no = classes + 4 * self.reg_max
        self.strides = strides
        c2 = max(16, channels[0] // 4, 4 * self.reg_max)
        c3 = max(channels[0], min(classes, 100))
        self.cv2 = nn.ModuleList(
            nn.Sequential(yolo_conv(c, c2, 3), yolo_conv(c2, c2, 3), nn.Conv2d(c2, 4 * 16, 1))
            for c in channels
        )
        self.cv3 = nn.ModuleList(
            nn.Sequential(yolo_conv(c, c3, 3), yolo_conv(c3, c3, 3), nn.Conv2d(c3, classes, 1))
            for c in channels
        )
        self.dfl = nn.Conv2d(self.reg_max, 1, 1, bias=False).requires_grad_(False)
        self.dfl.weight.data[:] = torch.arange(self.reg_max, dtype=torch.float).view(1, -1, 1, 1)

    def _anchors(self, feats: list[Tensor]) -> tuple[Tensor, Tensor]:
        points, strides = [], []
        for feat, stride in zip(feats, self.strides, strict=True):
            _, _, h, w = feat.shape
            sx = torch.arange(w, dtype=feat.dtype) + 0.5
            sy = torch.arange(h, dtype=feat.dtype) + 0.5
            gy, gx = torch.meshgrid(sy, sx, indexing="ij")
            points.append(torch.stack((gx, gy), -1).view(-1, 2))
            strides.append(torch.full((h * w, 1), float(stride), dtype=feat.dtype))
        return torch.cat(points).transpose(0, 1), torch.cat(strides).transpose(0, 1)

    def forward(self, feats: list[Tensor]) -> Tensor:
        outs = [
            torch.cat((b(f), c(f)), 1) for f, b, c in zip(feats, self.cv2, self.cv3, strict=True)
        ]
        batch = outs[0].shape[0]
        flat = torch.cat([o.view(batch, self.no, -1) for o in outs], 2)
        box, cls = flat.split((4 * self.reg_max, self.nc), 1)
        anchors, strides = self._anchors(outs)
        # DFL: softmax over the reg_max bins, expectation via a fixed 1x1 conv.
        dist = box.view(batch, 4, self.reg_max, -1).transpose(2, 1).softmax(1)
        dist = self.dfl(dist).view(batch, 4, -1)
        lt, rb = dist.chunk(2, 1)
        x1y1, x2y2 = anchors.unsqueeze(0) - lt, anchors.unsqueeze(0) + rb
        boxes = torch.cat(((x1y1 + x2y2) / 2, x2y2 - x1y1), 1) * strides
        return torch.cat((boxes, cls.sigmoid()), 1)


def yolov8() -> nn.Module:
    """YOLOv8n backbone (C2f, SPPF), PAN neck (upsample + concat), and the Detect head."""

    class YOLOv8(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.b0, self.b1 = yolo_conv(3, 16, 3, 2), yolo_conv(16, 32, 3, 2)
            self.b2 = C2f(32, 32, 1, True)
            self.b3, self.b4 = yolo_conv(32, 64, 3, 2), C2f(64, 64, 2, True)
            self.b5, self.b6 = yolo_conv(64, 128, 3, 2), C2f(128, 128, 2, True)
            self.b7, self.b8 = yolo_conv(128, 256, 3, 2), C2f(256, 256, 1, True)
            self.sppf = SPPF(256, 256)
            self.up = nn.Upsample(scale_factor=2.0, mode="nearest")
            self.h1 = C2f(256 + 128, 128, 1, False)
            self.h2 = C2f(128 + 64, 64, 1, False)
            self.d1, self.h3 = yolo_conv(64, 64, 3, 2), C2f(64 + 128, 128, 1, False)
            self.d2, self.h4 = yolo_conv(128, 128, 3, 2), C2f(128 + 256, 256, 1, False)
            self.detect = Detect(80, (64, 128, 256), (8, 16, 32))

        def forward(self, x: Tensor) -> Tensor:
            p3 = self.b4(self.b3(self.b2(self.b1(self.b0(x)))))
            p4 = self.b6(self.b5(p3))
            p5 = self.sppf(self.b8(self.b7(p4)))
            n4 = self.h1(torch.cat([self.up(p5), p4], 1))
            n3 = self.h2(torch.cat([self.up(n4), p3], 1))
            n4 = self.h3(torch.cat([self.d1(n3), n4], 1))
            n5 = self.h4(torch.cat([self.d2(n4), p5], 1))
            return self.detect([n3, n4, n5])

    return YOLOv8()


# --------------------------------------------------------------------------------------------
# UNet
# --------------------------------------------------------------------------------------------


def double_conv(cin: int, cout: int) -> nn.Sequential:
    """(3x3 conv + BN + ReLU) twice."""
    return nn.Sequential(conv_bn(cin, cout, 3), conv_bn(cout, cout, 3))


def unet() -> nn.Module:
    """Four-level UNet (widths 8..128): maxpool down, ConvTranspose up, skip concats."""

    class UNet(nn.Module):
        def __init__(self, widths: tuple[int, ...] = (8, 16, 32, 64, 128)) -> None:
            super().__init__()
            self.inc = double_conv(3, widths[0])
            self.downs = nn.ModuleList(double_conv(a, b) for a, b in itertools.pairwise(widths))
            rev = widths[::-1]
            self.ups = nn.ModuleList(
                nn.ConvTranspose2d(a, b, 2, 2) for a, b in itertools.pairwise(rev)
            )
            self.dec = nn.ModuleList(double_conv(2 * b, b) for b in rev[1:])
            self.outc = nn.Conv2d(widths[0], 2, 1)

        def forward(self, x: Tensor) -> Tensor:
            x = self.inc(x)
            skips = []
            for down in self.downs:
                skips.append(x)
                x = down(F.max_pool2d(x, 2))
            for up, dec in zip(self.ups, self.dec, strict=True):
                x = dec(torch.cat([skips.pop(), up(x)], 1))
            return self.outc(x)

    return UNet()


# --------------------------------------------------------------------------------------------
# ConvNeXt
# --------------------------------------------------------------------------------------------


class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over channels of an NCHW tensor, done channels-last via permute."""

    def forward(self, x: Tensor) -> Tensor:
        x = x.permute(0, 2, 3, 1)
        x = F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
        return x.permute(0, 3, 1, 2)


class ConvNeXtBlock(nn.Module):
    """dw 7x7 -> permute to NHWC -> LayerNorm -> Linear 4x -> GELU -> Linear -> layer scale
    -> permute back -> residual add."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, 7, padding=3, groups=dim)
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.pwconv1 = nn.Linear(dim, 4 * dim)
        self.act = nn.GELU()
        self.pwconv2 = nn.Linear(4 * dim, dim)
        self.layer_scale = nn.Parameter(torch.full((dim,), 1e-6))

    def forward(self, x: Tensor) -> Tensor:
        out = self.dwconv(x).permute(0, 2, 3, 1)
        out = self.pwconv2(self.act(self.pwconv1(self.norm(out))))
        out = (self.layer_scale * out).permute(0, 3, 1, 2)
        return x + out


def convnext() -> nn.Module:
    """ConvNeXt-T structure at widths 16..128 and depths 1/1/2/1."""
    dims, depths = (16, 32, 64, 128), (1, 1, 2, 1)

    class ConvNeXt(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            stages: list[nn.Module] = [
                nn.Sequential(nn.Conv2d(3, dims[0], 4, 4), LayerNorm2d(dims[0], eps=1e-6))
            ]
            for index, (dim, depth) in enumerate(zip(dims, depths, strict=True)):
                if index > 0:
                    stages.append(
                        nn.Sequential(
                            LayerNorm2d(dims[index - 1], eps=1e-6),
                            nn.Conv2d(dims[index - 1], dim, 2, 2),
                        )
                    )
                stages.append(nn.Sequential(*(ConvNeXtBlock(dim) for _ in range(depth))))
            self.features = nn.Sequential(*stages)
            self.norm = nn.LayerNorm(dims[-1], eps=1e-6)
            self.head = nn.Linear(dims[-1], 1000)

        def forward(self, x: Tensor) -> Tensor:
            x = self.features(x).mean([-2, -1])
            return self.head(self.norm(x))

    return ConvNeXt()


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


# --------------------------------------------------------------------------------------------
# Registry
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ZooEntry:
    """How to build one zoo model and the (static) input shape it is exported with."""

    build: Callable[[], nn.Module]
    input_shape: tuple[int, ...] = (1, 3, 64, 64)


ZOO: dict[str, ZooEntry] = {
    "resnet18": ZooEntry(resnet18),
    "resnet_tiny": ZooEntry(resnet_tiny, (1, 3, 32, 32)),
    "resnet_bottleneck": ZooEntry(resnet_bottleneck),
    "resnext": ZooEntry(resnext),
    "mobilenetv2": ZooEntry(mobilenetv2),
    "mobilenetv3": ZooEntry(mobilenetv3),
    "efficientnet": ZooEntry(efficientnet),
    "regnet": ZooEntry(regnet),
    "densenet": ZooEntry(densenet),
    "inception": ZooEntry(inception),
    "shufflenetv2": ZooEntry(shufflenetv2),
    "ghostnet": ZooEntry(ghostnet),
    "yolov8": ZooEntry(yolov8),
    "unet": ZooEntry(unet),
    "convnext": ZooEntry(convnext),
    "vgg": ZooEntry(vgg),
}


def stable_seed(name: str) -> int:
    """A seed that is the same in every process (unlike ``hash``, which is salted)."""
    return zlib.crc32(name.encode("utf-8"))


@torch.no_grad()
def randomize_norms(model: nn.Module, seed: int) -> None:
    """Give every norm layer and layer-scale parameter distinct, non-trivial values.

    Freshly initialised norms are all identical (mean 0, var 1, weight 1, bias 0): the classic
    exporter then deduplicates them or turns them into Identity, and a pruner could not tell
    a kept channel from a dropped one. Layer scale starts at 1e-6, which would hide whole
    residual branches from the numerical comparisons.
    """
    generator = torch.Generator().manual_seed(seed)

    def uniform(tensor: Tensor, low: float, high: float) -> None:
        tensor.copy_(torch.rand(tensor.shape, generator=generator) * (high - low) + low)

    def normal(tensor: Tensor, std: float) -> None:
        tensor.copy_(torch.randn(tensor.shape, generator=generator) * std)

    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            assert module.running_mean is not None and module.running_var is not None
            normal(module.running_mean, 0.1)
            uniform(module.running_var, 0.5, 1.5)
        if isinstance(module, nn.modules.batchnorm._BatchNorm | nn.LayerNorm | nn.GroupNorm):
            if module.weight is not None:
                uniform(module.weight, 0.5, 1.5)
            if module.bias is not None:
                normal(module.bias, 0.1)
    for name, param in model.named_parameters():
        if name.rsplit(".", 1)[-1] in ("layer_scale", "gamma"):
            uniform(param, 0.5, 1.5)


def build(name: str) -> nn.Module:
    """Build zoo model ``name`` in eval mode with deterministic weights and norm statistics."""
    try:
        entry = ZOO[name]
    except KeyError:
        raise KeyError(f"unknown zoo model {name!r}; known: {', '.join(ZOO)}") from None
    seed = stable_seed(name)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = entry.build()
    randomize_norms(model, seed + 1)
    return model.eval()


def example_input(name: str) -> Tensor:
    """The deterministic input used for export and for comparing torch with onnxruntime."""
    generator = torch.Generator().manual_seed(stable_seed(name) + 2)
    return torch.randn(ZOO[name].input_shape, generator=generator)
