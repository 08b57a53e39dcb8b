"""Elementwise ops: channels pass through unchanged, or are coupled across operands.

Spec: unary ops map each element independently; n-ary ops (Add, Mul, Where, ...) follow
numpy-style multidirectional broadcasting (PRelu's slope broadcasts unidirectionally, which
is the same alignment from the right).
"""

from __future__ import annotations

import numpy as np

from ..channels import Layout
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
    per-channel but not tracked cannot be sliced, so the channels stop here."""
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
        if ctx.constant(index) is None or first.tiled:
            ctx.block(f"per-channel operand {name!r} is computed from untracked channels")
            return
        ctx.slice(index, operand_axis, first.atoms)
    ctx.emit(0, Layout(axis, first.atoms, first.tiled))


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
