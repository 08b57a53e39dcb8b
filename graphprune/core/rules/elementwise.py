"""Elementwise ops: channels pass through unchanged, or are coupled across operands.

Spec: unary ops map each element independently; n-ary ops (Add, Mul, Where, ...) follow
numpy-style multidirectional broadcasting (PRelu's slope broadcasts unidirectionally, which
is the same alignment from the right).
"""

from __future__ import annotations

import numpy as np
import onnx

from ..channels import Layout, Target
from .context import Context
from .registry import rule

UNARY = (
    "Abs", "Acos", "Acosh", "Asin", "Asinh", "Atan", "Atanh", "BitwiseNot", "Cast", "Ceil",
    "Celu", "Cos", "Cosh", "Elu", "Erf", "Exp", "Floor", "Gelu", "HardSigmoid", "HardSwish",
    "Identity", "IsInf", "IsNaN", "LeakyRelu", "Log", "Mish", "Neg", "Not", "Reciprocal",
    "Relu", "Round", "Selu", "Shrink", "Sigmoid", "Sign", "Sin", "Sinh", "Softplus",
    "Softsign", "Sqrt", "Swish", "Tan", "Tanh", "ThresholdedRelu",
)  # fmt: skip

BROADCAST = (
    "Add", "And", "BitShift", "BitwiseAnd", "BitwiseOr", "BitwiseXor", "Clip", "Div", "Equal",
    "Greater", "GreaterOrEqual", "Less", "LessOrEqual", "Max", "Mean", "Min", "Mod", "Mul",
    "Or", "Pow", "PRelu", "Sub", "Sum", "Where", "Xor",
)  # fmt: skip


@rule(*UNARY, "Dropout", tiled=True)
def unary(ctx: Context) -> None:
    """Output element i depends on input element i only (Dropout's ratio is not data).
    Dropout's optional mask has the data's shape."""
    layout = ctx.data_layout()
    if layout is not None:
        for output in range(len(ctx.node.output)):
            ctx.emit(output, layout)


@rule("CastLike", tiled=True)
def cast_like(ctx: Context) -> None:
    """Input 0 cast to the element type of input 1: only input 1's type is read, so its
    channels (the unoptimized dynamo export casts a scale constant like the query it
    multiplies) reach nothing."""
    layout = ctx.layout(0)
    if layout is not None:
        ctx.emit(0, layout)


# onnxruntime's contrib ops that are elementwise with an optional per-channel bias input
# (BiasGelu, FastGelu: gelu(X + bias); QuickGelu: X * sigmoid(alpha * X); BiasAdd:
# X + bias + skip, skip of X's shape).
CONTRIB_ELEMENTWISE = ("BiasAdd", "BiasGelu", "FastGelu", "Gelu", "QuickGelu")


@rule(*CONTRIB_ELEMENTWISE, domain="com.microsoft")
@rule(*BROADCAST, tiled=True)
def broadcast(ctx: Context) -> None:
    """Tracked operands couple position by position; a constant operand that is per-channel
    is sliced; one that broadcasts (size 1) needs nothing; a runtime operand that is
    per-channel but not tracked is sliced where an elementwise op computes it from
    per-channel constants and operands that broadcast (`_computed_per_channel`: a
    per-column weight scale times a dynamic activation scale), else the channels stop."""
    tracked = ctx.tracked()
    if not tracked:
        return
    out_shape = ctx.output_shape()
    if out_shape is None:
        ctx.block("output shape unknown")
        return
    rank = len(out_shape)
    axes = {layout.axis + rank - len(ctx.input_shape(i)) for i, layout in tracked}
    # A tiled axis is as long as the input's symbolic dim, a plain one as its atoms.
    sizes = {ctx.input_shape(i)[x.axis] if x.tiled else x.size for i, x in tracked}
    tiled = {layout.tiled for _, layout in tracked}
    if len(axes) != 1 or len(tiled) != 1 or len(sizes) != 1 or out_shape[min(axes)] != sizes.pop():
        ctx.block("operands carry channels on different axes or broadcast them")
        return
    axis = axes.pop()
    first = tracked[0][1]
    for _, layout in tracked[1:]:
        ctx.couple(first.atoms, layout.atoms)
    tracked_indices = {i for i, _ in tracked}
    for index, name in enumerate(ctx.node.input):
        if not name or index in tracked_indices:
            continue
        shape = ctx.input_shape(index)
        if shape is None:
            ctx.block(f"shape of operand {index} unknown")
            return
        operand_axis = axis - (rank - len(shape))
        if operand_axis < 0 or shape[operand_axis] == 1:
            continue
        if ctx.constant(index) is not None and not first.tiled:
            ctx.slice(index, operand_axis, first.atoms)
            continue
        edits = None if first.tiled else _computed_per_channel(ctx, name, operand_axis)
        if edits is None:
            ctx.block(f"per-channel operand {name!r} is computed from untracked channels")
            return
        for edit in edits:
            if isinstance(edit, Target):
                ctx.set_count(edit, first.atoms)
            else:
                ctx.slice_at(*edit, first.atoms)
    ctx.emit(0, Layout(axis, first.atoms, first.tiled))


# A constant input to slice upstream (node, input, axis), or a shape entry to set.
Upstream = tuple[str, int, int] | Target
_ARITHMETIC = ("Add", "Sub", "Mul", "Div")


def _computed_per_channel(
    ctx: Context, name: str, axis: int, depth: int = 8
) -> list[Upstream] | None:
    """What to edit when tensor `name`, per-channel along `axis`, is computed for this node
    alone from per-channel constants by ops that keep position i at position i, all
    other operands broadcasting along the axis (size 1, computed or not): Add/Sub/Mul/Div
    (a per-column weight scale times a dynamic activation scale), unary elementwise ops
    (the Cast(Floor(bias / scale)) of a bias quantized at runtime) and a Reshape that only
    moves the axis among size-1 axes ([C] -> [1, C, 1, 1]: its target entry becomes the
    kept count). None when it is not so computed."""
    view = ctx.view
    producer = view.producer(name)
    if (
        depth == 0
        or producer is None
        or producer.domain
        or len(view.consumers(name)) != 1
        or name in view.graph_outputs
        or any(ctx.layout_of(source) is not None for source in producer.input if source)
    ):
        return None
    if producer.op_type in UNARY:
        return _computed_per_channel(ctx, producer.input[0], axis, depth - 1)
    if producer.op_type == "Reshape":
        return _reshaped_vector(ctx, producer, axis, depth)
    if producer.op_type not in _ARITHMETIC:
        return None
    rank = len(view.shape(name) or ())
    edits: list[Upstream] = []
    for i, source in enumerate(producer.input):
        shape = view.shape(source)
        if shape is None:
            return None
        along = axis - (rank - len(shape))
        if along < 0 or shape[along] == 1:
            continue
        if view.constant_shape(source) is not None:
            edits.append((producer.name, i, along))
            continue
        upstream = _computed_per_channel(ctx, source, along, depth - 1)
        if upstream is None:
            return None
        edits += upstream
    return edits or None


def _reshaped_vector(
    ctx: Context, reshape: onnx.NodeProto, axis: int, depth: int
) -> list[Upstream] | None:
    """A Reshape whose input and output each have one axis that is not 1, the channels'."""
    view = ctx.view
    in_shape, out_shape = view.shape(reshape.input[0]), view.shape(reshape.output[0])
    target = view.constant(reshape.input[1])
    if in_shape is None or out_shape is None or target is None:
        return None
    target = [int(d) for d in target.reshape(-1)]
    wide = [a for a, d in enumerate(in_shape) if d != 1]
    if len(wide) != 1 or [a for a, d in enumerate(out_shape) if d != 1] != [axis]:
        return None
    if in_shape[wide[0]] != out_shape[axis] or target[axis] not in (-1, out_shape[axis]):
        return None
    upstream = _computed_per_channel(ctx, reshape.input[0], wide[0], depth - 1)
    if upstream is None or target[axis] == -1:
        return upstream
    return [*upstream, Target(reshape.name, input_index=1, entry=axis)]


@rule("BiasSplitGelu", domain="com.microsoft")
def bias_split_gelu(ctx: Context) -> None:
    """com.microsoft.BiasSplitGelu: X [N, S, D] plus bias [D], split in halves on the last
    axis; output [N, S, D/2] is left * gelu(right), so position d of the output is made of
    positions d and D/2 + d: they are coupled, and the output carries the left half."""
    x = ctx.data_layout()
    if x is None:
        return
    if x.axis != len(ctx.input_shape(0)) - 1 or x.size % 2 or ctx.constant(1) is None:
        ctx.block("channels off the last axis, or a bias computed at runtime")
        return
    left, right = np.split(x.atoms, 2)
    ctx.couple(left, right)
    ctx.slice(1, 0, x.atoms)
    ctx.emit(0, Layout(x.axis, left))
