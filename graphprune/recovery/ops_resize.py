"""Resize (and the older Upsample) of the lowering: nearest and linear by the spec's own
coordinate formulas, axis by axis with gathers (exact for every coordinate mode), cubic
through torch's bicubic where the two agree (2-D, half-pixel or align-corners, a=-0.75)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .ops_tensor import ints
from .registry import op

_MODES = ("half_pixel", "pytorch_half_pixel", "align_corners", "asymmetric",
          "tf_half_pixel_for_nn")  # fmt: skip


@op("Resize", frozen=(1, 2))
def resize(node, x, roi=None, scales=None, sizes=None):
    if node.opset < 11:
        return _resize(node, x, _floats(roi), None, "asymmetric", "floor")
    if node.attr("antialias", 0) or node.attr("keep_aspect_ratio_policy", "stretch") != "stretch":
        raise node.refuse("antialias and keep_aspect_ratio_policy are not supported")
    axes = node.attr("axes") or list(range(x.dim()))
    full_scales, full_sizes = [1.0] * x.dim(), list(x.shape)
    given_scales = _floats(scales)
    given_sizes = ints(sizes) if sizes is not None and sizes.numel() else None
    for i, axis in enumerate(axes):
        axis %= x.dim()
        if given_sizes is not None:
            full_sizes[axis] = given_sizes[i]
            full_scales[axis] = given_sizes[i] / x.shape[axis]
        elif given_scales:
            full_scales[axis] = given_scales[i]
            full_sizes[axis] = math.floor(x.shape[axis] * given_scales[i])
    mode = node.attr("coordinate_transformation_mode", "half_pixel")
    nearest = node.attr("nearest_mode", "round_prefer_floor")
    return _resize(node, x, full_scales, full_sizes, mode, nearest)


@op("Upsample", frozen=(1,))
def upsample(node, x, scales=None):
    values = _floats(scales) if scales is not None else list(node.attr("scales"))
    return _resize(node, x, values, None, "asymmetric", "floor")


def _floats(t) -> list[float]:
    return [] if t is None or t.numel() == 0 else [float(v) for v in t.reshape(-1).tolist()]


def _resize(node, x, scales, sizes, mode, nearest):
    if sizes is None:
        sizes = [math.floor(d * s) for d, s in zip(x.shape, scales, strict=True)]
    kind = node.attr("mode", "nearest")
    if mode not in _MODES:
        raise node.refuse(f"coordinate_transformation_mode {mode!r} is not supported")
    if kind == "cubic":
        return _cubic(node, x, sizes, mode)
    if kind not in ("nearest", "linear"):
        raise node.refuse(f"mode {kind!r} is not supported")
    for axis in range(x.dim()):
        if sizes[axis] == x.shape[axis] and scales[axis] == 1.0:
            continue
        source = _source(x.shape[axis], sizes[axis], scales[axis], mode, x.device)
        x = _nearest(x, axis, source, nearest) if kind == "nearest" else _linear(x, axis, source)
    return x


def _source(size: int, out: int, scale: float, mode: str, device) -> torch.Tensor:
    """The input coordinate of each output position along one axis (the spec's formula)."""
    i = torch.arange(out, dtype=torch.float64, device=device)
    if mode == "align_corners":
        return i * ((size - 1) / (out - 1)) if out > 1 else torch.zeros_like(i)
    if mode == "asymmetric":
        return i / scale
    if mode == "tf_half_pixel_for_nn":
        return (i + 0.5) / scale
    if mode == "pytorch_half_pixel" and out <= 1:
        return torch.zeros_like(i)
    return (i + 0.5) / scale - 0.5


def _nearest(x, axis, source, rule):
    picks = {
        "round_prefer_floor": lambda s: torch.ceil(s - 0.5),
        "round_prefer_ceil": lambda s: torch.floor(s + 0.5),
        "floor": torch.floor,
        "ceil": torch.ceil,
    }[rule](source)
    picks = picks.clamp(0, x.shape[axis] - 1).long()
    return x.index_select(axis, picks)


def _linear(x, axis, source):
    source = source.clamp(0, x.shape[axis] - 1)
    low = source.floor().long()
    high = (low + 1).clamp(max=x.shape[axis] - 1)
    shape = [1] * x.dim()
    shape[axis] = -1
    weight = (source - low).to(x.dtype).reshape(shape)
    return x.index_select(axis, low) * (1 - weight) + x.index_select(axis, high) * weight


def _cubic(node, x, sizes, mode):
    plain = (
        x.dim() == 4 and sizes[:2] == list(x.shape[:2])
        and node.attr("cubic_coeff_a", -0.75) == -0.75 and not node.attr("exclude_outside", 0)
        and mode in ("half_pixel", "pytorch_half_pixel", "align_corners")
    )  # fmt: skip
    if not plain:
        raise node.refuse("cubic resize other than torch's bicubic is not supported")
    return F.interpolate(x, size=sizes[2:], mode="bicubic", align_corners=mode == "align_corners")
