"""Convolution geometry and im2col: the features a Conv's weight actually multiplies.

A Conv with weight (O, C, k...) is a linear map from input *patches* (C * prod(k) values,
zero padding included) to outputs, so the statistics that closed-form compensation needs
(means and the second-moment matrix X^T X, as in OBS, Hassibi & Stork 1993) are those of
the patches, not of the channels: a channel-level X^T X would ignore the spatial
correlations inside the kernel and the zeros of the padding. The patch layout matches
`weight.reshape(O, -1)`: channel-major, then kernel positions in row-major order.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import onnx
from numpy.lib.stride_tricks import sliding_window_view

from ..io.protos import node_attribute


@dataclass(frozen=True)
class ConvGeometry:
    """Kernel, strides, pads (begins then ends, as in ONNX) and dilations of one Conv."""

    kernel: tuple[int, ...]
    strides: tuple[int, ...]
    pads: tuple[int, ...]
    dilations: tuple[int, ...]
    auto_pad: str = "NOTSET"

    @property
    def size(self) -> int:
        return math.prod(self.kernel)

    def key(self) -> str:
        return (
            f"k{self.kernel}s{self.strides}p{self.pads}d{self.dilations}{self.auto_pad}"
        ).replace(" ", "")

    def resolved_pads(self, spatial: tuple[int, ...]) -> tuple[int, ...]:
        """Explicit pads for input spatial dims (auto_pad SAME_* depends on them)."""
        if self.auto_pad in ("NOTSET", ""):
            return self.pads
        n = len(self.kernel)
        if self.auto_pad == "VALID":
            return (0,) * (2 * n)
        begins, ends = [], []
        for size, k, s, d in zip(spatial, self.kernel, self.strides, self.dilations, strict=True):
            total = max((math.ceil(size / s) - 1) * s + (k - 1) * d + 1 - size, 0)
            small = total // 2
            begin = small if self.auto_pad == "SAME_UPPER" else total - small
            begins.append(begin)
            ends.append(total - begin)
        return tuple(begins + ends)


def conv_geometry(node: onnx.NodeProto, weight_shape: tuple[int, ...]) -> ConvGeometry:
    kernel = tuple(int(k) for k in weight_shape[2:])
    n = len(kernel)
    auto_pad = node_attribute(node, "auto_pad", b"NOTSET")
    auto_pad = auto_pad.decode() if isinstance(auto_pad, bytes) else str(auto_pad)
    return ConvGeometry(
        kernel=kernel,
        strides=tuple(int(v) for v in node_attribute(node, "strides", [1] * n)),
        pads=tuple(int(v) for v in node_attribute(node, "pads", [0] * 2 * n)),
        dilations=tuple(int(v) for v in node_attribute(node, "dilations", [1] * n)),
        auto_pad=auto_pad,
    )


def im2col(x: np.ndarray, geometry: ConvGeometry) -> np.ndarray:
    """(B, C, *spatial) -> (B * prod(output spatial), C * prod(kernel)) patch rows."""
    n = len(geometry.kernel)
    channels = x.shape[1]
    pads = geometry.resolved_pads(tuple(x.shape[2:]))
    padded = np.pad(x, [(0, 0), (0, 0)] + [(pads[i], pads[i + n]) for i in range(n)])
    windows = [(k - 1) * d + 1 for k, d in zip(geometry.kernel, geometry.dilations, strict=True)]
    view = sliding_window_view(padded, windows, axis=tuple(range(2, 2 + n)))
    strides = [slice(None, None, s) for s in geometry.strides]
    dilations = [slice(None, None, d) for d in geometry.dilations]
    index = (slice(None), slice(None), *strides, *dilations)
    view = view[index]  # (B, C, *out, *kernel)
    order = (0, *range(2, 2 + n), 1, *range(2 + n, 2 + 2 * n))
    return view.transpose(order).reshape(-1, channels * geometry.size)
