"""Shape, indexing and type ops of the lowering. Shapes and indices are small int64
tensors, read with `.tolist()` where torch wants Python numbers: the graph runs eagerly,
so any batch size and sequence length the model accepts runs here too."""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from onnx import numpy_helper

from .dtypes import to_tensor, torch_dtype
from .registry import op


def ints(t) -> list[int]:
    return [int(v) for v in t.reshape(-1).tolist()]


@op("Identity")
def identity(node, x):
    return x


@op("Dropout", frozen=(1, 2))
def dropout(node, x, ratio=None, training=None):
    # An exported graph is for inference: Dropout passes its input (the mask is all true).
    return (x, torch.ones_like(x, dtype=torch.bool)) if node.outputs() > 1 else x


@op("Cast")
def cast(node, x):
    return x.to(torch_dtype(node.attr("to")))


@op("CastLike")
def cast_like(node, x, like):
    return x.to(like.dtype)


@op("Constant")
def constant(node):
    attrs = node.attrs
    if "value" in attrs:
        return to_tensor(numpy_helper.to_array(attrs["value"]))
    for name, dtype in (("value_float", np.float32), ("value_floats", np.float32),
                        ("value_int", np.int64), ("value_ints", np.int64)):  # fmt: skip
        if name in attrs:
            return torch.from_numpy(np.array(attrs[name], dtype=dtype))
    raise node.refuse(f"a Constant of {sorted(attrs)} is not supported")


@op("ConstantOfShape")
def constant_of_shape(node, shape):
    value = node.attr("value")
    fill = to_tensor(numpy_helper.to_array(value)) if value is not None else torch.zeros(1)
    return torch.full(ints(shape), fill.reshape(-1)[0].item(), dtype=fill.dtype)


@op("Shape")
def shape(node, x):
    dims = list(x.shape)[node.attr("start", 0) : node.attr("end", None)]
    return torch.tensor(dims, dtype=torch.int64)


@op("Size")
def size(node, x):
    return torch.tensor(x.numel(), dtype=torch.int64)


@op("Range")
def arange(node, start, limit, delta):
    return torch.arange(start.item(), limit.item(), delta.item(), dtype=start.dtype)


@op("Reshape")
def reshape(node, x, target=None):
    dims = ints(target) if node.opset >= 5 else list(node.attr("shape"))
    if not node.attr("allowzero", 0):
        dims = [x.shape[i] if d == 0 else d for i, d in enumerate(dims)]
    return x.reshape(dims)


@op("Flatten")
def flatten(node, x):
    axis = node.attr("axis", 1) % (x.dim() + 1) if x.dim() else 0
    return x.reshape(math.prod(x.shape[:axis]), math.prod(x.shape[axis:]))


@op("Transpose")
def transpose(node, x):
    perm = node.attr("perm") or list(range(x.dim()))[::-1]
    return x.permute(*perm)


def _axes_of(node, given, default=None):
    if node.opset >= 13:
        return default if given is None else ints(given)
    return list(node.attr("axes", default or []))


@op("Squeeze")
def squeeze(node, x, axes=None):
    axes = _axes_of(node, axes)
    if not axes:
        return x.reshape([d for d in x.shape if d != 1])
    axes = sorted({a % x.dim() for a in axes})
    return x.reshape([d for i, d in enumerate(x.shape) if i not in axes])


@op("Unsqueeze")
def unsqueeze(node, x, axes=None):
    axes = _axes_of(node, axes)
    rank = x.dim() + len(axes)
    shape = list(x.shape)
    for axis in sorted(a % rank for a in axes):
        shape.insert(axis, 1)
    return x.reshape(shape)


@op("Concat")
def concat(node, *xs):
    return torch.cat(list(xs), node.attr("axis"))


@op("Split", frozen=(1,))
def split(node, x, sizes=None):
    axis = node.attr("axis", 0) % x.dim()
    parts = ints(sizes) if node.opset >= 13 and sizes is not None else node.attr("split")
    if not parts:
        count = node.attr("num_outputs", node.outputs())
        step = math.ceil(x.shape[axis] / count) if node.opset >= 18 else x.shape[axis] // count
        parts = [step] * (count - 1) + [x.shape[axis] - step * (count - 1)]
    return tuple(torch.split(x, list(parts), axis))


@op("Slice")
def slice_(node, x, starts=None, ends=None, axes=None, steps=None):
    if node.opset < 10:
        starts, ends = node.attr("starts"), node.attr("ends")
        axes, steps = node.attr("axes") or list(range(len(starts))), [1] * len(starts)
    else:
        starts, ends = ints(starts), ints(ends)
        axes = ints(axes) if axes is not None else list(range(len(starts)))
        steps = ints(steps) if steps is not None else [1] * len(starts)
    index: list = [slice(None)] * x.dim()
    flips = []
    for start, end, axis, step in zip(starts, ends, axes, steps, strict=True):
        axis %= x.dim()
        dim = x.shape[axis]
        start, end = start + dim if start < 0 else start, end + dim if end < 0 else end
        if step > 0:
            index[axis] = slice(min(max(start, 0), dim), min(max(end, 0), dim), step)
        else:
            flips.append((axis, min(max(start, 0), dim - 1), min(max(end, -1), dim - 1), step))
    out = x[tuple(index)]
    for axis, start, end, step in flips:  # torch slices only forwards
        picks = torch.arange(start, end, step, device=x.device)
        out = out.index_select(axis, picks)
    return out


def _positive(indices, dim):
    return torch.where(indices < 0, indices + dim, indices)


@op("Gather", scalar_weights=True, tables=(0,))
def gather(node, data, indices):
    axis = node.attr("axis", 0) % data.dim()
    picks = _positive(indices.long(), data.shape[axis])
    out = data.index_select(axis, picks.reshape(-1))
    return out.reshape([*data.shape[:axis], *indices.shape, *data.shape[axis + 1 :]])


@op("GatherElements", scalar_weights=True, tables=(0,))
def gather_elements(node, data, indices):
    axis = node.attr("axis", 0) % data.dim()
    return torch.gather(data, axis, _positive(indices.long(), data.shape[axis]))


@op("GatherND", scalar_weights=True, tables=(0,))
def gather_nd(node, data, indices):
    batch = node.attr("batch_dims", 0)
    indices = indices.long()
    depth = indices.shape[-1]
    lead = data.shape[:batch]
    flat = data.reshape(math.prod(lead), *data.shape[batch:])
    idx = indices.reshape(math.prod(lead), -1, depth)
    rows = torch.arange(flat.shape[0], device=data.device).reshape(-1, 1)
    picks = [_positive(idx[..., k], flat.shape[1 + k]) for k in range(depth)]
    out = flat[(rows.expand_as(picks[0]) if picks else rows, *picks)]
    return out.reshape([*indices.shape[:-1], *data.shape[batch + depth :]])


@op("ScatterND")
def scatter_nd(node, data, indices, updates):
    indices = indices.long()
    picks = tuple(_positive(indices[..., k], data.shape[k]) for k in range(indices.shape[-1]))
    reduction = node.attr("reduction", "none")
    if reduction not in ("none", "add"):
        raise node.refuse(f"reduction {reduction!r} is not supported")
    return data.index_put(picks, updates, accumulate=reduction == "add")


@op("ScatterElements", "Scatter")
def scatter_elements(node, data, indices, updates):
    axis = node.attr("axis", 0) % data.dim()
    indices = _positive(indices.long(), data.shape[axis])
    reduction = node.attr("reduction", "none")
    if reduction == "none":
        return data.scatter(axis, indices, updates)
    modes = {"add": "sum", "mul": "prod", "max": "amax", "min": "amin"}
    return data.scatter_reduce(axis, indices, updates, modes[reduction], include_self=True)


@op("Expand")
def expand(node, x, target):
    return x.expand(torch.broadcast_shapes(tuple(x.shape), tuple(ints(target))))


@op("Tile")
def tile(node, x, repeats):
    return x.repeat(ints(repeats))


@op("Pad", frozen=(2,))
def pad(node, x, pads=None, value=None, axes=None):
    if node.opset < 11:
        pads, value = list(node.attr("pads")), node.attr("value", 0.0)
    else:
        pads = ints(pads)
        value = 0.0 if value is None or value.numel() == 0 else value.reshape(-1)[0].item()
    axes = ints(axes) if axes is not None else list(range(x.dim()))
    half = len(pads) // 2
    begins, ends = pads[:half], pads[half:]
    torch_pads: list[int] = [0] * (2 * x.dim())
    for axis, begin, end in zip(axes, begins, ends, strict=True):
        axis %= x.dim()
        position = 2 * (x.dim() - 1 - axis)
        torch_pads[position : position + 2] = [begin, end]
    while len(torch_pads) > 2 and torch_pads[-2:] == [0, 0]:
        torch_pads = torch_pads[:-2]
    mode = node.attr("mode", "constant")
    if mode == "constant":
        return F.pad(x, torch_pads, value=value)
    modes = {"reflect": "reflect", "edge": "replicate", "wrap": "circular"}
    return F.pad(x, torch_pads, mode=modes[mode])


@op("OneHot", frozen=(1, 2))
def one_hot(node, indices, depth, values):
    depth = int(depth.reshape(-1)[0].item())
    axis = node.attr("axis", -1)
    indices = _positive(indices.long(), depth)
    hot = F.one_hot(indices.clamp(0, depth - 1), depth).bool() & (
        (indices >= 0) & (indices < depth)).unsqueeze(-1)  # fmt: skip
    out = torch.where(hot, values[1], values[0])
    return out.movedim(-1, axis % out.dim())


@op("NonZero")
def nonzero(node, x):
    return torch.nonzero(x).transpose(0, 1).contiguous()


@op("Trilu")
def trilu(node, x, k=None):
    offset = 0 if k is None else int(k.item())
    return torch.triu(x, offset) if node.attr("upper", 1) else torch.tril(x, offset)


@op("DepthToSpace")
def depth_to_space(node, x):
    block, (n, c, h, w) = node.attr("blocksize"), x.shape
    if node.attr("mode", "DCR") == "DCR":
        y = x.reshape(n, block, block, c // block**2, h, w).permute(0, 3, 4, 1, 5, 2)
    else:
        y = x.reshape(n, c // block**2, block, block, h, w).permute(0, 1, 4, 2, 5, 3)
    return y.reshape(n, c // block**2, h * block, w * block)


@op("SpaceToDepth")
def space_to_depth(node, x):
    block, (n, c, h, w) = node.attr("blocksize"), x.shape
    y = x.reshape(n, c, h // block, block, w // block, block).permute(0, 3, 5, 1, 2, 4)
    return y.reshape(n, c * block**2, h // block, w // block)


@op("EyeLike")
def eye_like(node, x):
    dtype = torch_dtype(node.attr("dtype")) if node.attr("dtype") is not None else x.dtype
    out = torch.zeros(x.shape, dtype=dtype)
    k = node.attr("k", 0)
    rows = torch.arange(max(0, -k), min(x.shape[0], x.shape[1] - k))
    out[rows, rows + k] = 1
    return out
