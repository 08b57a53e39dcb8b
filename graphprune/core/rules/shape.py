"""Ops that move or regroup axes: Transpose, Squeeze, Unsqueeze, Reshape, Flatten,
DepthToSpace, SpaceToDepth, and Shape (which reads dimensions at runtime).

Reshape and Flatten are mapped exactly from the inferred input and output shapes: the
axes are split into aligned blocks of equal element count, and the channel atoms are
reshaped with the data. When a block splits the channel axis into several axes (channel
shuffle, a decomposed GroupNorm), the channels that share a position along all but one
output axis are coupled, so removal leaves a rectangular block; the constant that encodes
that axis' size is rewritten.
"""

from __future__ import annotations

import numpy as np

from ..channels import Layout, Target
from .context import Context
from .registry import rule


@rule("Transpose")
def transpose(ctx: Context) -> None:
    """Output axis i is input axis perm[i] (default: reversed)."""
    x = ctx.layout(0)
    if x is None:
        return
    rank = len(ctx.input_shape(0) or ())
    perm = list(ctx.attr("perm", list(range(rank))[::-1]))
    ctx.emit(0, Layout(perm.index(x.axis), x.atoms))


@rule("Squeeze", "Unsqueeze")
def squeeze(ctx: Context) -> None:
    """Axes come from input 1 (opset 13+) or the attribute; the channel axis shifts by the
    number of removed or inserted axes before it."""
    x = ctx.layout(0)
    if x is None:
        return
    in_shape, out_shape = ctx.input_shape(0), ctx.output_shape()
    if in_shape is None or out_shape is None:
        ctx.block("shapes unknown")
        return
    kept_in = _surviving_axes(ctx, len(in_shape), len(out_shape))
    if kept_in is None or x.axis not in kept_in:
        ctx.block("axes unknown" if kept_in is None else "squeezes the channel axis")
        return
    ctx.emit(0, Layout(kept_in[x.axis], x.atoms))


def _surviving_axes(ctx: Context, in_rank: int, out_rank: int) -> dict[int, int] | None:
    """Map input axis -> output axis for the axes that survive."""
    axes = ctx.view.int_list(ctx.node, 1 if ctx.view.opset >= 13 else None, "axes")
    if ctx.node.op_type == "Squeeze":
        if axes is None:
            shape = ctx.input_shape(0)
            axes = [i for i, d in enumerate(shape) if d == 1]
        removed = {a % in_rank for a in axes}
        survivors = [i for i in range(in_rank) if i not in removed]
        return {axis: out for out, axis in enumerate(survivors)}
    if axes is None:
        return None
    inserted = {a % out_rank for a in axes}
    outputs = [i for i in range(out_rank) if i not in inserted]
    return dict(enumerate(outputs))


@rule("Flatten")
def flatten(ctx: Context) -> None:
    x = ctx.layout(0)
    if x is not None:
        _reshape(ctx, x, shape_input=None)


@rule("Reshape")
def reshape(ctx: Context) -> None:
    x = ctx.data_layout()
    if x is None:
        return
    _reshape(ctx, x, shape_input=1)


def _reshape(ctx: Context, x: Layout, shape_input: int | None) -> None:
    in_shape, out_shape = ctx.input_shape(0), ctx.output_shape()
    if shape_input is not None and in_shape is not None:
        out_shape = _resolved_target(ctx, in_shape, out_shape)
    if in_shape is None or out_shape is None:
        ctx.block("shapes unknown")
        return
    block = _aligned_block(list(in_shape), list(out_shape), x.axis)
    if block is None:
        ctx.block(f"cannot align {list(in_shape)} with {list(out_shape)} at the channel axis")
        return
    (i0, i1), (o0, o1) = block
    in_dims, out_dims = in_shape[i0:i1], out_shape[o0:o1]
    if not all(isinstance(d, int) for d in (*in_dims, *out_dims)):
        ctx.block("the channel axis is reshaped together with a symbolic dim")
        return
    grid = np.broadcast_to(
        x.atoms.reshape([-1 if a == x.axis else 1 for a in range(i0, i1)]), in_dims
    ).reshape(out_dims)
    varying = [a for a in range(grid.ndim) if not _constant_along(grid, a)]
    if not varying:
        ctx.block("the channel axis collapses")
        return
    keep, heads = _choose_axis(ctx, varying, o0)
    for position in range(grid.shape[keep]):
        ctx.couple_all(np.take(grid, position, axis=keep))
    if heads:
        ctx.mark_heads(grid)
    index = [0] * grid.ndim
    index[keep] = slice(None)
    atoms = grid[tuple(index)]
    out_axis = o0 + keep
    if shape_input is not None:
        target = _shape_entry(ctx, shape_input, out_axis)
        if isinstance(target, str):
            ctx.block(target)
            return
        if target is not None:
            ctx.set_count(target, atoms)
    ctx.emit(0, Layout(out_axis, atoms))


def _resolved_target(ctx: Context, in_shape, inferred):
    """The Reshape output shape, worked out from the target when shape inference left
    symbolic gaps (a target like Concat(Shape(x)[0], -1) with a symbolic batch)."""
    if inferred is not None and all(isinstance(d, int) for d in inferred):
        return inferred
    target = _target_entries(ctx.view, ctx.view.input(ctx.node, 1))
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


def _target_entries(view, tensor: str | None) -> list | None:
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
        return _target_entries(view, producer.input[0])
    if producer.op_type == "Concat":
        pieces = [_target_entries(view, piece) for piece in producer.input]
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


def _choose_axis(ctx: Context, varying: list[int], offset: int) -> tuple[int, bool]:
    """Which output axis keeps distinct channels. A consumer that computes statistics over
    some axes (a decomposed GroupNorm reshapes to [N, G, -1] and normalizes per group)
    decides. A split that feeds attention (a MatMul of two computed tensors: [B, S, H*D]
    -> [B, S, H, D]) keeps the outer axis, so whole heads are the unit of removal.
    Otherwise the innermost axis, which keeps the finest granularity (channel shuffle keeps
    every channel removable). Also says whether the kept axis holds attention heads."""
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
    preferred = [a for a in varying if a + offset not in statistics_over] or varying
    if len(preferred) > 1 and _feeds_attention(ctx.view, ctx.node.output[0]):
        return preferred[0], True
    return preferred[-1], False


# Layers with weights end the search, and so do selectors: a packed QKV projection is
# reshaped to [B, S, 3, E] and Q, K, V are gathered from the 3-axis, which is no head axis.
_ENDS_ATTENTION_SEARCH = {"MatMul", "Gemm", "Conv", "ConvTranspose", "Gather", "Split"}


def _feeds_attention(view, tensor: str, depth: int = 8) -> bool:
    """Whether `tensor` reaches a MatMul of two computed operands within `depth` ops,
    without passing through a layer with weights or a selector."""
    frontier, seen = [tensor], set()
    for _ in range(depth):
        following = []
        for name in frontier:
            for consumer, _ in view.consumers(name):
                if consumer.name in seen:
                    continue
                seen.add(consumer.name)
                constant_operand = any(view.is_constant(i) for i in consumer.input[:2] if i)
                if consumer.op_type == "MatMul" and not constant_operand:
                    return True
                if consumer.op_type not in _ENDS_ATTENTION_SEARCH:
                    following.extend(o for o in consumer.output if o)
        frontier = following
    return False


def _shape_entry(ctx: Context, index: int, entry: int) -> Target | str | None:
    """Where the target shape's `entry` is stored: a constant, or a constant piece of a
    Concat that builds the shape (Shape->Gather->Concat chains). None when the entry needs
    no rewrite (-1 is inferred), a string when it is computed at runtime."""
    view = ctx.view
    node, tensor = ctx.node, view.input(ctx.node, index)
    for _ in range(16):
        value = view.constant(tensor)
        if value is not None:
            current = int(value.reshape(-1)[entry])
            if current == -1:
                return None
            if current == 0:
                return "target shape copies the channel count (0)"
            return Target(node.name, input_index=index, entry=entry)
        producer = view.producer(tensor)
        if producer is None or producer.op_type != "Concat":
            return "channel count of the target shape is computed at runtime"
        offset = 0
        for piece_index, piece in enumerate(producer.input):
            shape = view.shape(piece)
            if not shape or not isinstance(shape[0], int):
                return "target shape pieces have unknown sizes"
            if offset + shape[0] > entry:
                node, index, tensor, entry = producer, piece_index, piece, entry - offset
                break
            offset += shape[0]
        else:
            return "target shape entry not found"
    return "target shape chain too deep"


@rule("DepthToSpace")
def depth_to_space(ctx: Context) -> None:
    """Output channel c gathers input channels {c + k * C/b^2} (DCR) or {c * b^2 + k} (CRD)
    for k < b^2: they are removed together."""
    x = ctx.layout(0)
    if x is None:
        return
    if x.axis != 1:
        ctx.block("channels off axis 1")
        return
    area = int(ctx.attr("blocksize")) ** 2
    mode = ctx.attr("mode", b"DCR")
    mode = mode.decode() if isinstance(mode, bytes) else mode
    grid = x.atoms.reshape(area, -1).T if mode == "DCR" else x.atoms.reshape(-1, area)
    for row in grid:
        ctx.couple_all(row)
    ctx.emit(0, Layout(1, grid[:, 0]))


@rule("SpaceToDepth")
def space_to_depth(ctx: Context) -> None:
    """Output channel (i * b + j) * C + c is input channel c at block offset (i, j)."""
    x = ctx.layout(0)
    if x is None:
        return
    if x.axis != 1:
        ctx.block("channels off axis 1")
        return
    ctx.emit(0, Layout(1, np.tile(x.atoms, int(ctx.attr("blocksize")) ** 2)))


@rule("Shape")
def shape(ctx: Context) -> None:
    """The output holds the input's dims; reading the channel dim at runtime would see the
    pruned count, which only an exact rewrite of the consumer could account for. Reading
    other dims (Gather or Slice of other entries) is harmless."""
    x = ctx.layout(0)
    if x is None:
        return
    start = int(ctx.attr("start", 0))
    rank = len(ctx.input_shape(0) or ())
    end = int(ctx.attr("end", rank))
    start, end, _ = slice(start, end).indices(rank)
    if not start <= x.axis < end:
        return
    entry = x.axis - start
    for consumer, _ in ctx.view.consumers(ctx.node.output[0]):
        if not _reads_other_entries(ctx, consumer, entry):
            ctx.block(f"channel count read at runtime by {consumer.op_type} '{consumer.name}'")
            return


def _reads_other_entries(ctx: Context, consumer, entry: int) -> bool:
    view = ctx.view
    if consumer.op_type == "Gather":
        indices = view.constant(consumer.input[1])
        return indices is not None and entry not in {int(i) for i in indices.reshape(-1)}
    if consumer.op_type == "Slice":
        starts = view.int_list(consumer, 1, "starts")
        ends = view.int_list(consumer, 2, "ends")
        steps = view.int_list(consumer, 4, None) or [1]
        length = (ctx.output_shape() or (None,))[0]  # entries in the Shape output
        if starts is None or ends is None or len(starts) != 1 or not isinstance(length, int):
            return False
        return entry not in range(*slice(starts[0], ends[0], steps[0]).indices(length))
    return False


@rule("Expand")
def expand(ctx: Context) -> None:
    """Expand broadcasts to a target shape aligned from the right. The target entry at the
    channel axis must be 1 (channels kept as they are) or the channel count, which is
    rewritten wherever it is stored (a constant or a constant piece of a Concat, as in
    repeat_kv of grouped-query attention)."""
    x = ctx.data_layout()
    if x is None:
        return
    out_rank = len(ctx.output_shape() or ())
    in_rank = len(ctx.input_shape(0) or ())
    target = _target_entries(ctx.view, ctx.view.input(ctx.node, 1))
    if target is None:
        ctx.block("target shape unknown")
        return
    axis = x.axis + out_rank - in_rank
    entry = axis - (out_rank - len(target))
    value = target[entry] if entry >= 0 else 1
    if value not in (1, x.size):
        ctx.block("target shape at the channel axis is not a constant 1 or the channel count")
        return
    if value == x.size and x.size != 1:
        where = _shape_entry(ctx, 1, entry)
        if isinstance(where, str):
            ctx.block(where)
            return
        if where is not None:
            ctx.set_count(where, x.atoms)
    ctx.emit(0, Layout(axis, x.atoms))
