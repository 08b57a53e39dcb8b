"""Reshape and Flatten, mapped exactly from the inferred input and output shapes.

The axes are split into aligned blocks of equal element count, and the channel atoms are
reshaped with the data. When a block splits the channel axis into several axes (channel
shuffle, a decomposed GroupNorm, attention heads), the channels that share a position
along all but one output axis are coupled, so removal leaves a rectangular block; the
constant that encodes that axis' size is rewritten.

Symbolic dims are products of symbols and an integer ('batch', '4*batch'). Each dim is
viewed as its factors, symbols outer (p = b * 4 + h for '4*batch'): any factorization of
an axis is a valid coordinate system for it, so when the factors of input and output
align, the channel mapping is exact for every value of the symbols. A channel factor that
ends up inside a product dim gives a tiled layout (`Layout.tiled`): torch's
nn.MultiheadAttention folds the heads into the batch ([S, B, H*D] -> [S, B*H, D]).
"""

from __future__ import annotations

import re

import numpy as np

from ..channels import Layout, Target
from .context import Context
from .registry import rule


@rule("Flatten", tiled=True)
def flatten(ctx: Context) -> None:
    x = ctx.layout(0)
    if x is not None:
        _reshape(ctx, x, shape_input=None)


@rule("Reshape", tiled=True, count_inputs=(1,))
def reshape(ctx: Context) -> None:
    x = ctx.data_layout()
    if x is None:
        if ctx.layout(1) is not None:
            ctx.block("a channel count read at runtime shapes a tensor without channels")
        return
    _reshape(ctx, x, shape_input=1)


def _reshape(ctx: Context, x: Layout, shape_input: int | None) -> None:
    in_shape, out_shape = ctx.input_shape(0), ctx.output_shape()
    if shape_input is not None and in_shape is not None:
        out_shape = _resolved_target(ctx, in_shape, out_shape)
    if in_shape is None or out_shape is None:
        ctx.block("shapes unknown")
        return
    in_factors, in_owner = _expanded(in_shape)
    out_factors, out_owner = _expanded(out_shape)
    channel = _channel_factor(in_factors, in_owner, x)
    block = None if channel is None else _aligned_block(in_factors, out_factors, channel)
    if block is None:
        ctx.block(f"cannot align {list(in_shape)} with {list(out_shape)} at the channel axis")
        return
    (i0, i1), (o0, o1) = block
    in_dims, out_dims = in_factors[i0:i1], out_factors[o0:o1]
    if not all(isinstance(d, int) for d in (*in_dims, *out_dims)):
        ctx.block("the channel axis is reshaped together with a symbolic dim")
        return
    grid = np.broadcast_to(
        x.atoms.reshape([-1 if a == channel else 1 for a in range(i0, i1)]), in_dims
    ).reshape(out_dims)
    varying = [a for a in range(grid.ndim) if not _constant_along(grid, a)]
    if not varying:
        ctx.block("the channel axis collapses")
        return
    keep, heads = _choose_axis(ctx, varying, out_owner[o0:o1])
    for position in range(grid.shape[keep]):
        ctx.couple_all(np.take(grid, position, axis=keep))
    if heads:
        ctx.mark_heads(grid)
    index = [0] * grid.ndim
    index[keep] = slice(None)
    atoms = grid[tuple(index)]
    out_axis = out_owner[o0 + keep]
    tiled = out_owner.count(out_axis) > 1  # the symbols of a product dim come first
    if shape_input is not None and not runtime_count(ctx, shape_input, out_axis, atoms, tiled):
        target = shape_entry(ctx, shape_input, out_axis, product_of=len(atoms) if tiled else None)
        if isinstance(target, str):
            ctx.block(target)
            return
        if target is not None:
            ctx.set_count(target, atoms)
    ctx.emit(0, Layout(out_axis, atoms, tiled))


_PRODUCT = re.compile(r"\s*(\d+|[A-Za-z_]\w*)(\s*\*\s*(\d+|[A-Za-z_]\w*))*\s*")


def _factors(dim: int | str | None) -> list[int | str | None]:
    """A dim as factors: itself, or a product's symbols (sorted) then its coefficient."""
    if not isinstance(dim, str) or not _PRODUCT.fullmatch(dim):
        return [dim]
    coefficient, symbols = 1, []
    for part in (p.strip() for p in dim.split("*")):
        if part.isdigit():
            coefficient *= int(part)
        else:
            symbols.append(part)
    if not symbols:
        return [coefficient]
    return sorted(symbols) + ([coefficient] if coefficient != 1 else [])


def _expanded(shape) -> tuple[list, list[int]]:
    """The factors of every dim, and the axis each factor belongs to."""
    factors: list = []
    owner: list[int] = []
    for axis, dim in enumerate(shape):
        parts = _factors(dim)
        factors += parts
        owner += [axis] * len(parts)
    return factors, owner


def _channel_factor(factors: list, owner: list[int], x: Layout) -> int | None:
    """The factor that holds the channels: the whole channel axis, or for a tiled layout
    the integer factor after the symbols of its product dim."""
    mine = [i for i, axis in enumerate(owner) if axis == x.axis]
    last = factors[mine[-1]] if mine else None
    if x.tiled:
        symbolic = all(isinstance(factors[i], str) for i in mine[:-1])
        return mine[-1] if len(mine) > 1 and symbolic and last == x.size else None
    return mine[0] if len(mine) == 1 and isinstance(last, int) else None


def _resolved_target(ctx: Context, in_shape, inferred):
    """The Reshape output shape, worked out from the target when shape inference left
    symbolic gaps (a target like Concat(Shape(x)[0], -1) with a symbolic batch)."""
    if inferred is not None and all(isinstance(d, int) for d in inferred):
        return inferred
    target = target_entries(ctx.view, ctx.view.input(ctx.node, 1))
    if target is None:
        return inferred
    dims = [in_shape[i] if d == 0 else d for i, d in enumerate(target)]
    if dims.count(-1) == 1:
        known_in = [d for d in in_shape if isinstance(d, int)]
        known_out = [d for d in dims if isinstance(d, int) and d != -1]
        symbols_in = sorted(str(d) for d in in_shape if not isinstance(d, int))
        symbols_out = sorted(str(d) for d in dims if not isinstance(d, int))
        if symbols_in != symbols_out or None in in_shape or np.prod(known_out) == 0:
            return inferred
        dims[dims.index(-1)] = int(np.prod(known_in) // np.prod(known_out))
    return tuple(dims) if -1 not in dims else inferred


def target_entries(view, tensor: str | None) -> list | None:
    """Entries of a shape tensor: constants, or dims read by Shape -> Gather (symbolic)."""
    if tensor is None:
        return None
    value = view.constant(tensor)
    if value is not None:
        return [int(v) for v in value.reshape(-1)]
    producer = view.producer(tensor)
    if producer is None:
        return None
    if producer.op_type in ("Unsqueeze", "Cast", "Identity"):
        return target_entries(view, producer.input[0])
    if producer.op_type == "Concat":
        pieces = [target_entries(view, piece) for piece in producer.input]
        return None if any(p is None for p in pieces) else [d for p in pieces for d in p]
    if producer.op_type == "Shape":
        source = view.shape(producer.input[0])
        if source is None:
            return None
        start = int(view.attribute(producer, "start", 0))
        end = int(view.attribute(producer, "end", len(source)))
        return list(source[slice(start, end)])
    if producer.op_type == "Gather" and view.producer(producer.input[0]) is not None:
        shape_node = view.producer(producer.input[0])
        indices = view.constant(producer.input[1])
        source = view.shape(shape_node.input[0]) if shape_node.op_type == "Shape" else None
        if source is None or indices is None or view.attribute(shape_node, "start", 0):
            return None
        return [source[int(i)] for i in indices.reshape(-1)]
    return None


def _aligned_block(in_shape: list, out_shape: list, axis: int):
    """The ranges of input and output axes whose products match and contain `axis`.

    Walks from the left, else from the right: once the axes on one side of a block align,
    the element count fixes the other side, so symbolic dims that shape inference could
    not relate (a batch the exporter specialised) only matter on the side walked."""
    block = _aligned_from_left(in_shape, out_shape, axis)
    if block is not None:
        return block
    flipped = _aligned_from_left(in_shape[::-1], out_shape[::-1], len(in_shape) - 1 - axis)
    if flipped is None:
        return None
    (i0, i1), (j0, j1) = flipped
    return (len(in_shape) - i1, len(in_shape) - i0), (len(out_shape) - j1, len(out_shape) - j0)


def _aligned_from_left(in_shape: list, out_shape: list, axis: int):
    """Symbolic dims align only with an identical symbol; size-1 axes join the block
    before them."""
    i = j = 0
    while i < len(in_shape) and j < len(out_shape):
        i0, j0 = i, j
        a, b = in_shape[i], out_shape[j]
        i, j = i + 1, j + 1
        if not isinstance(a, int) or not isinstance(b, int):
            if a != b or a is None:
                return None
        else:
            while a != b:
                if a < b and i < len(in_shape) and isinstance(in_shape[i], int):
                    a *= in_shape[i]
                    i += 1
                elif b < a and j < len(out_shape) and isinstance(out_shape[j], int):
                    b *= out_shape[j]
                    j += 1
                else:
                    return None
        while i < len(in_shape) and in_shape[i] == 1 and (j >= len(out_shape) or out_shape[j] != 1):
            i += 1
        while j < len(out_shape) and out_shape[j] == 1 and (i >= len(in_shape) or in_shape[i] != 1):
            j += 1
        if i0 <= axis < i:
            return (i0, i), (j0, j)
    return None


def _constant_along(grid: np.ndarray, axis: int) -> bool:
    return bool(np.all(grid == np.take(grid, [0], axis=axis)))


def _choose_axis(ctx: Context, varying: list[int], axes: list[int]) -> tuple[int, bool]:
    """Which output axis keeps distinct channels. A consumer that computes statistics over
    some axes (a decomposed GroupNorm reshapes to [N, G, -1] and normalizes per group)
    decides. A split that feeds attention (a MatMul of two computed tensors: [B, S, H*D]
    -> [B, S, H, D]) keeps the outer axis, so whole heads are the unit of removal.
    Otherwise the innermost axis, which keeps the finest granularity (channel shuffle keeps
    every channel removable). Also says whether the kept axis holds attention heads.
    `axes[a]` is the output axis that grid axis `a` belongs to."""
    statistics_over: set[int] = set()
    for consumer, _ in ctx.view.consumers(ctx.node.output[0]):
        rank = len(ctx.output_shape() or ())
        if consumer.op_type in ("InstanceNormalization", "GroupNormalization"):
            statistics_over |= set(range(2, rank))
        elif consumer.op_type.startswith("Reduce"):
            axes = ctx.view.int_list(consumer, 1, "axes") or []
            statistics_over |= {a % rank for a in axes}
        elif consumer.op_type == "LayerNormalization":
            statistics_over |= set(
                range(int(ctx.view.attribute(consumer, "axis", -1)) % rank, rank)
            )
    # Q, K and V of a packed projection ([B, S, 3, H, D]) are selected along one axis
    # (Gather, Slice, Split, after a Transpose): that axis is no channel axis.
    statistics_over |= _selected_axes(ctx.view, ctx.node.output[0])
    preferred = [a for a in varying if axes[a] not in statistics_over] or varying
    if len(preferred) > 1 and _feeds_attention(ctx.view, ctx.node.output[0]):
        return preferred[0], True
    return preferred[-1], False


# Layers with weights end the search.
_ENDS_ATTENTION_SEARCH = {"MatMul", "Gemm", "Conv", "ConvTranspose"}
# onnxruntime's attention ops that take heads on their own axis (packed QKV or KV).
_FUSED_ATTENTION = {"MultiHeadAttention", "PackedMultiHeadAttention"}


def _selected_axes(view, tensor: str) -> set[int]:
    """Axes of `tensor` that consumers select along (Gather, Split, a one-axis Slice),
    directly or after ops that only move axes (Transpose, Squeeze, Unsqueeze)."""
    selected: set[int] = set()
    frontier: list[tuple[str, list]] = [(tensor, list(range(len(view.shape(tensor) or ()))))]
    while frontier:
        name, origin = frontier.pop()  # origin[i]: the axis of `tensor` that axis i is
        rank = len(origin)
        for consumer, index in view.consumers(name):
            if index != 0 or not rank:
                continue
            moved = _moved_axes(view, consumer, origin)
            if moved is not None:
                frontier.append((consumer.output[0], moved))
            elif consumer.op_type in ("Gather", "Split"):
                selected.add(origin[int(view.attribute(consumer, "axis", 0)) % rank])
            elif consumer.op_type == "Slice":
                picked = view.int_list(consumer, 3, "axes")
                if picked is not None and len(picked) == 1:
                    selected.add(origin[picked[0] % rank])
    return selected - {None}


def _moved_axes(view, node, origin: list) -> list | None:
    """`origin` after a Transpose, Squeeze or Unsqueeze (None for other ops)."""
    rank = len(origin)
    if node.op_type == "Transpose":
        return [origin[p] for p in view.attribute(node, "perm", list(range(rank))[::-1])]
    if node.op_type not in ("Squeeze", "Unsqueeze"):
        return None
    kept = surviving_axes(view, node)
    out_shape = view.shape(node.output[0])
    if kept is None or out_shape is None:
        return None
    moved: list = [None] * len(out_shape)
    for axis, out in kept.items():
        moved[out] = origin[axis]
    return moved


def surviving_axes(view, node) -> dict[int, int] | None:
    """Input axis -> output axis for the axes a Squeeze or Unsqueeze keeps; axes come from
    input 1 (opset 13+) or the attribute. None when shapes or axes are unknown."""
    in_shape, out_shape = view.shape(node.input[0]), view.shape(node.output[0])
    if in_shape is None or out_shape is None:
        return None
    axes = view.int_list(node, 1 if view.opset >= 13 else None, "axes")
    if node.op_type == "Squeeze":
        if axes is None:
            axes = [i for i, d in enumerate(in_shape) if d == 1]
        removed = {a % len(in_shape) for a in axes}
        survivors = [i for i in range(len(in_shape)) if i not in removed]
        return {axis: out for out, axis in enumerate(survivors)}
    if axes is None:
        return None
    inserted = {a % len(out_shape) for a in axes}
    return dict(enumerate(i for i in range(len(out_shape)) if i not in inserted))


_REQUANTIZE = {"QuantizeLinear", "DequantizeLinear"}


def _is_weight(view, tensor: str) -> bool:
    """A constant, or a constant's dequantized values (QDQ)."""
    producer = view.producer(tensor)
    if producer is not None and producer.op_type == "DequantizeLinear":
        return view.is_constant(producer.input[0])
    return view.is_constant(tensor)


def _feeds_attention(view, tensor: str, depth: int = 8) -> bool:
    """Whether `tensor` reaches a MatMul of two computed operands (or onnxruntime's fused
    attention) within `depth` ops, without passing through a layer with weights."""
    frontier, seen = [tensor], set()
    for _ in range(depth):
        following = []
        for name in frontier:
            for consumer, _ in view.consumers(name):
                if consumer.name in seen:
                    continue
                seen.add(consumer.name)
                constant_operand = any(_is_weight(view, i) for i in consumer.input[:2] if i)
                if consumer.op_type == "MatMul" and not constant_operand:
                    return True
                if consumer.domain == "com.microsoft" and consumer.op_type in _FUSED_ATTENTION:
                    return True
                if consumer.op_type in _REQUANTIZE:  # moves no data: costs no depth
                    frontier.append(consumer.output[0])
                elif consumer.op_type not in _ENDS_ATTENTION_SEARCH:
                    following.extend(o for o in consumer.output if o)
        frontier = following
    return False


def runtime_count(ctx: Context, index: int, entry: int, atoms: np.ndarray, tiled: bool) -> bool:
    """Whether the target shape's `entry` is a channel count read at runtime that follows
    `atoms`: then it needs no rewrite, and the channels it counts are coupled with them.
    A count of other channels, or at another entry, stops both."""
    count = ctx.layout(index)
    if count is None:
        return False
    if count.axis != entry or count.size != len(atoms) or count.tiled != tiled:
        ctx.block("the target shape reads another channel count at runtime")
        return True
    ctx.couple(count.atoms, atoms)
    return True


def shape_entry(
    ctx: Context, index: int, entry: int, *, product_of: int | None = None
) -> Target | str | None:
    """Where the target shape's `entry` is stored: a constant, or a constant piece of a
    Concat that builds the shape (Shape->Gather->Concat chains). None when the entry needs
    no rewrite (-1 is inferred), a string when it is computed at runtime.

    `product_of`: the entry is a symbolic dim times this many channels (a tiled layout),
    computed as Mul(symbolic size, constant); the constant is what changes."""
    view = ctx.view
    node, tensor = ctx.node, view.input(ctx.node, index)
    path: list[tuple[str, int]] = []  # the hops from the rule's node to the entry's
    for _ in range(16):
        value = view.constant(tensor)
        if value is not None:
            current = int(value.reshape(-1)[entry])
            if current == -1:
                return None
            if current == 0:
                return "target shape copies the channel count (0)"
            if product_of is not None and node.op_type != "Mul":
                return "target shape holds a fixed size where the channels meet a symbolic dim"
            return Target(node.name, input_index=index, entry=entry, path=tuple(path))
        producer = view.producer(tensor)
        if producer is not None and product_of is not None:
            step = _product_step(view, producer, entry, product_of)
            if step is not None:
                path.append((node.name, index))
                node, index, tensor, entry = producer, step, producer.input[step], 0
                continue
        if producer is None or producer.op_type != "Concat":
            return "channel count of the target shape is computed at runtime"
        offset = 0
        for piece_index, piece in enumerate(producer.input):
            shape = view.shape(piece)
            if not shape or not isinstance(shape[0], int):
                return "target shape pieces have unknown sizes"
            if offset + shape[0] > entry:
                path.append((node.name, index))
                node, index, tensor, entry = producer, piece_index, piece, entry - offset
                break
            offset += shape[0]
        else:
            return "target shape entry not found"
    return "target shape chain too deep"


def _product_step(view, producer, entry: int, product_of: int) -> int | None:
    """Which input of `producer` a symbolic-product shape entry continues in: a scalar
    made a vector (Unsqueeze, Reshape), or the constant factor of Mul(symbolic size,
    channels)."""
    if producer.op_type in ("Unsqueeze", "Reshape") and entry == 0:
        return 0 if view.shape(producer.input[0]) in ((), (1,)) else None
    if producer.op_type != "Mul" or entry != 0:
        return None
    for index, name in enumerate(producer.input[:2]):
        value = view.constant(name)
        other = view.constant(producer.input[1 - index])
        if value is not None and other is None and value.size == 1:
            return index if int(value.reshape(-1)[0]) == product_of else None
    return None
