"""Convolutions, pooling and normalizations of the lowering. ONNX pads may be asymmetric
and `auto_pad` may ask for SAME padding: both become an explicit `F.pad` before torch's op,
which then runs unpadded."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .registry import op

_CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}
_CONV_T = {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}
_MAX = {1: F.max_pool1d, 2: F.max_pool2d, 3: F.max_pool3d}
_AVG = {1: F.avg_pool1d, 2: F.avg_pool2d, 3: F.avg_pool3d}


def _pads(node, spatial, kernel, strides, dilations) -> list[tuple[int, int]]:
    """(begin, end) padding per spatial axis, `auto_pad` resolved."""
    auto = node.attr("auto_pad", "NOTSET")
    rank = len(kernel)
    if auto in ("SAME_UPPER", "SAME_LOWER"):
        pairs = []
        for size, k, s, d in zip(spatial, kernel, strides, dilations, strict=True):
            total = max(0, (math.ceil(size / s) - 1) * s + (k - 1) * d + 1 - size)
            small, large = total // 2, total - total // 2
            pairs.append((small, large) if auto == "SAME_UPPER" else (large, small))
        return pairs
    if auto == "VALID":
        return [(0, 0)] * rank
    pads = list(node.attr("pads", [0] * (2 * rank)))
    return list(zip(pads[:rank], pads[rank:], strict=True))


def _torch_pad(pairs: list[tuple[int, int]]) -> list[int]:
    flat: list[int] = []
    for begin, end in reversed(pairs):
        flat += [begin, end]
    return flat


def _geometry(node, x, kernel):
    rank = len(kernel)
    strides = list(node.attr("strides", [1] * rank))
    dilations = list(node.attr("dilations", [1] * rank))
    return strides, dilations, _pads(node, x.shape[2:], kernel, strides, dilations)


@op("Conv", scalar_weights=True)
def conv(node, x, w, b=None):
    kernel = list(node.attr("kernel_shape") or w.shape[2:])
    if len(kernel) not in _CONV:
        raise node.refuse(f"{len(kernel)}-D convolution is not supported")
    strides, dilations, pairs = _geometry(node, x, kernel)
    if any(p for pair in pairs for p in pair):
        x = F.pad(x, _torch_pad(pairs))
    return _CONV[len(kernel)](x, w, b, strides, 0, dilations, node.attr("group", 1))


@op("ConvTranspose", scalar_weights=True)
def conv_transpose(node, x, w, b=None):
    kernel = list(node.attr("kernel_shape") or w.shape[2:])
    rank = len(kernel)
    if rank not in _CONV_T or node.attr("output_shape") is not None:
        raise node.refuse("output_shape, or a rank other than 1-3, is not supported")
    if node.attr("auto_pad", "NOTSET") not in ("NOTSET", "VALID"):
        raise node.refuse("auto_pad SAME is not supported for ConvTranspose")
    strides = list(node.attr("strides", [1] * rank))
    dilations = list(node.attr("dilations", [1] * rank))
    extra = list(node.attr("output_padding", [0] * rank))
    pads = list(node.attr("pads", [0] * (2 * rank)))
    out = _CONV_T[rank](x, w, b, strides, 0, extra, node.attr("group", 1), dilations)
    # Padding crops the full transposed output: begin from the front, end from the back.
    index = [slice(None), slice(None)] + [
        slice(pads[i], out.shape[2 + i] - pads[rank + i]) for i in range(rank)
    ]
    return out[tuple(index)]


def _ceil_extra(node, x, kernel, strides, dilations, pairs):
    """Padding past the end that turns ceil_mode windows into floor_mode ones."""
    if not node.attr("ceil_mode", 0):
        return [0] * len(kernel)
    extra = []
    for size, k, s, d, (b, e) in zip(x.shape[2:], kernel, strides, dilations, pairs, strict=True):
        padded, span = size + b + e, (k - 1) * d + 1
        out = math.ceil((padded - span) / s) + 1
        if (out - 1) * s >= size + b:  # the last window must start inside the input or pads
            out -= 1
        extra.append(max(0, (out - 1) * s + span - padded))
    return extra


@op("MaxPool")
def max_pool(node, x):
    kernel = list(node.attr("kernel_shape"))
    if node.outputs() > 1:
        raise node.refuse("the Indices output is not supported")
    strides, dilations, pairs = _geometry(node, x, kernel)
    extra = _ceil_extra(node, x, kernel, strides, dilations, pairs)
    pairs = [(b, e + x_) for (b, e), x_ in zip(pairs, extra, strict=True)]
    if any(p for pair in pairs for p in pair):
        x = F.pad(x, _torch_pad(pairs), value=-math.inf)
    return _MAX[len(kernel)](x, kernel, strides, 0, dilations)


@op("AveragePool")
def average_pool(node, x):
    kernel = list(node.attr("kernel_shape"))
    strides, dilations, pairs = _geometry(node, x, kernel)
    if any(d != 1 for d in dilations):
        raise node.refuse("dilated average pooling is not supported")
    extra = _ceil_extra(node, x, kernel, strides, dilations, pairs)
    if not any(p for pair in pairs for p in pair) and not any(extra):
        return _AVG[len(kernel)](x, kernel, strides)
    # Sums over windows, divided by how many elements each window counts: the input and,
    # with count_include_pad, the declared pads, never the ceil_mode overhang.
    ones = torch.ones((1, 1, *x.shape[2:]), dtype=x.dtype, device=x.device)
    include = node.attr("count_include_pad", 0)
    counted = F.pad(ones, _torch_pad(pairs), value=float(include))
    full = [(b, e + x_) for (b, e), x_ in zip(pairs, extra, strict=True)]
    counted = F.pad(counted, _torch_pad([(0, x_) for x_ in extra]))
    sums = _AVG[len(kernel)](F.pad(x, _torch_pad(full)), kernel, strides)
    counts = _AVG[len(kernel)](counted, kernel, strides)
    return sums / counts


@op("GlobalAveragePool")
def global_average_pool(node, x):
    return x.mean(dim=tuple(range(2, x.dim())), keepdim=True)


@op("GlobalMaxPool")
def global_max_pool(node, x):
    return x.amax(dim=tuple(range(2, x.dim())), keepdim=True)


def _channel_shape(x):
    return (1, -1) + (1,) * (x.dim() - 2)


@op("BatchNormalization", frozen=(3, 4), scalar_weights=True)
def batch_norm(node, x, scale, bias, mean, var):
    # Inference semantics: the running statistics are constants of the model (frozen).
    if node.outputs() > 1 and node.attr("training_mode", 0):
        raise node.refuse("training_mode is not supported")
    shape = _channel_shape(x)
    inv = torch.rsqrt(var.reshape(shape) + node.attr("epsilon", 1e-5))
    return (x - mean.reshape(shape)) * inv * scale.reshape(shape) + bias.reshape(shape)


@op("InstanceNormalization", scalar_weights=True)
def instance_norm(node, x, scale, bias):
    return F.instance_norm(x, weight=scale, bias=bias, eps=node.attr("epsilon", 1e-5))


def _normalize(x, axes, eps):
    mean = x.mean(dim=axes, keepdim=True)
    var = ((x - mean) ** 2).mean(dim=axes, keepdim=True)
    return (x - mean) * torch.rsqrt(var + eps), mean, torch.rsqrt(var + eps)


@op("LayerNormalization", scalar_weights=True)
def layer_norm(node, x, scale, bias=None):
    axis = node.attr("axis", -1) % x.dim()
    eps = node.attr("epsilon", 1e-5)
    axes = tuple(range(axis, x.dim()))
    if node.outputs() == 1 and tuple(scale.shape) == tuple(x.shape[axis:]):
        return F.layer_norm(x, x.shape[axis:], scale, bias, eps)
    normal, mean, inv = _normalize(x, axes, eps)
    out = normal * scale + (0 if bias is None else bias)
    return (out, mean, inv)[: node.outputs()]


@op("GroupNormalization", scalar_weights=True)
def group_norm(node, x, scale, bias):
    groups = node.attr("num_groups")
    n, c = x.shape[:2]
    grouped = x.reshape(n, groups, -1)
    normal, _, _ = _normalize(grouped, (2,), node.attr("epsilon", 1e-5))
    if scale.numel() == groups and groups != c:  # opset 18: one scale per group
        out = normal * scale.reshape(1, groups, 1) + bias.reshape(1, groups, 1)
        return out.reshape(x.shape)
    shape = _channel_shape(x)
    return normal.reshape(x.shape) * scale.reshape(shape) + bias.reshape(shape)


@op("SimplifiedLayerNormalization", scalar_weights=True)
def simplified_layer_norm(node, x, scale):
    axis = node.attr("axis", -1) % x.dim()
    axes = tuple(range(axis, x.dim()))
    inv = torch.rsqrt((x * x).mean(dim=axes, keepdim=True) + node.attr("epsilon", 1e-5))
    return ((x * inv) * scale, inv)[: node.outputs()] if node.outputs() > 1 else x * inv * scale


@op("LpNormalization")
def lp_normalization(node, x):
    return F.normalize(x, p=float(node.attr("p", 2)), dim=node.attr("axis", -1), eps=0.0)


@op("LRN")
def lrn(node, x):
    return F.local_response_norm(
        x, node.attr("size"), node.attr("alpha", 1e-4), node.attr("beta", 0.75),
        node.attr("bias", 1.0),
    )  # fmt: skip


@op("MeanVarianceNormalization")
def mean_variance_normalization(node, x):
    axes = tuple(node.attr("axes", [0, 2, 3]))
    return _normalize(x, axes, 1e-9)[0]
