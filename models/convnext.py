"""ConvNeXt for the zoo: depthwise 7x7, channels-last LayerNorm, layer scale."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

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
