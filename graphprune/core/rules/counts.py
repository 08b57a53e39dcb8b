"""Count rules: how a channel count read at runtime (`Layout.count`, from Shape) moves
through the small integer ops that build shape vectors, by the ONNX spec of each.

The count is entry `axis` of a 1-D vector (axis 0 of a scalar). An op that selects other
entries drops it; an op that could change its value (arithmetic) has no count rule, so
the registry stops it there.
"""

from __future__ import annotations

from dataclasses import replace

from .context import Context
from .registry import count_rule


def _vector_length(ctx: Context) -> int | None:
    shape = ctx.input_shape(0)
    if shape is None or len(shape) > 1:
        return None
    length = shape[0] if shape else 1
    return length if isinstance(length, int) else None


@count_rule("Cast", "Identity")
def passthrough(ctx: Context) -> None:
    """The value is unchanged (a cast between integer types)."""
    ctx.emit(0, ctx.layout(0))


@count_rule("Squeeze", "Unsqueeze")
def scalar_vector(ctx: Context) -> None:
    """A one-entry vector becomes a scalar or back; the count stays the only entry."""
    in_rank, out_rank = len(ctx.input_shape(0) or ()), len(ctx.output_shape() or ())
    if {in_rank, out_rank} != {0, 1} or ctx.layout(0).axis != 0:
        ctx.block("reshapes a channel count read at runtime")
        return
    ctx.emit(0, ctx.layout(0))


@count_rule("Gather")
def gather(ctx: Context) -> None:
    """Output entry i is input entry indices[i] (axis 0, constant indices)."""
    count, indices, length = ctx.layout(0), ctx.constant(1), _vector_length(ctx)
    if indices is None or length is None or int(ctx.attr("axis", 0)) != 0:
        ctx.block("selects from a channel count read at runtime with unknown indices")
        return
    picks = [int(i) % length for i in indices.reshape(-1)]
    if count.axis not in picks:
        return
    if picks.count(count.axis) > 1:
        ctx.block("repeats a channel count read at runtime")
        return
    ctx.emit(0, replace(count, axis=picks.index(count.axis)))


@count_rule("Slice")
def slice_(ctx: Context) -> None:
    """Output entry i is input entry range(start, end, step)[i] (axis 0, constant bounds)."""
    count, length, view = ctx.layout(0), _vector_length(ctx), ctx.view
    starts = view.int_list(ctx.node, 1, "starts")
    ends = view.int_list(ctx.node, 2, "ends")
    steps = view.int_list(ctx.node, 4, "steps") or [1]
    axes = view.int_list(ctx.node, 3, "axes") or [0]
    if None in (starts, ends, length) or len(starts) != 1 or axes[0] not in (0, -1):
        ctx.block("slices a channel count read at runtime with unknown bounds")
        return
    picks = list(range(*slice(starts[0], ends[0], steps[0]).indices(length)))
    if count.axis in picks:
        ctx.emit(0, replace(count, axis=picks.index(count.axis)))


@count_rule("Concat")
def concat(ctx: Context) -> None:
    """Entries end to end: the count moves by the lengths of the pieces before it."""
    (index, count), *others = ctx.tracked()
    offset = 0
    for name in ctx.node.input[:index]:
        shape = ctx.view.shape(name) if name else None
        if others or shape is None or len(shape) != 1 or not isinstance(shape[0], int):
            ctx.block("concatenates a channel count read at runtime with pieces of unknown length")
            return
        offset += shape[0]
    ctx.emit(0, replace(count, axis=count.axis + offset))
