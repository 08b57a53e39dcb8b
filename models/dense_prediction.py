"""Dense-prediction models of the zoo: a YOLOv8-style detector and a UNet."""

from __future__ import annotations

import itertools

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .blocks import conv_bn

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
