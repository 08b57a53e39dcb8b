"""Mobile families of the zoo: MobileNetV2/V3, EfficientNet, ShuffleNetV2, GhostNet."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .blocks import SqueezeExcite, conv_bn, make_divisible

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
