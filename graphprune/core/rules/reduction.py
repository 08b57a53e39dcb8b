"""Pooling and reductions: channels pass through unless the op reduces over them.

Spec: pooling ops (MaxPool, AveragePool, LpPool, Global*Pool) work per (sample, channel)
over the spatial axes 2..; Reduce* take `axes` as an input (opset 18, ReduceSum 13) or an
attribute; ArgMax/ArgMin take one `axis`.
"""

from __future__ import annotations

from ..channels import Layout
from .context import Context
from .registry import rule


@rule("AveragePool", "GlobalAveragePool", "GlobalLpPool", "GlobalMaxPool", "LpPool", "MaxPool")
def pool(ctx: Context) -> None:
    """Per-channel spatial pooling. MaxPool's optional Indices output flattens positions
    including the channel offset, so a model using it cannot lose channels here."""
    x = ctx.layout(0)
    if x is None:
        return
    uses_indices = len(ctx.node.output) > 1 and ctx.node.output[1]
    if x.axis != 1 or uses_indices:
        ctx.block("pools over the channel axis" if x.axis != 1 else "Indices output is used")
        return
    ctx.emit(0, x)


REDUCE = (
    "ReduceL1", "ReduceL2", "ReduceLogSum", "ReduceLogSumExp", "ReduceMax", "ReduceMean",
    "ReduceMin", "ReduceProd", "ReduceSum", "ReduceSumSquare",
)  # fmt: skip


def _axes_from_input(ctx: Context) -> bool:
    if ctx.node.op_type == "ReduceSum":
        return ctx.view.opset >= 13
    return ctx.view.opset >= 18


@rule(*REDUCE)
def reduce(ctx: Context) -> None:
    """A reduction over non-channel axes keeps the channels; with keepdims=0 the channel
    axis moves left by the number of reduced axes before it."""
    x = ctx.layout(0)
    if x is None:
        return
    rank = len(ctx.input_shape(0) or ())
    axes = ctx.view.int_list(ctx.node, 1 if _axes_from_input(ctx) else None, "axes")
    if axes is None and _axes_from_input(ctx) and ctx.view.input(ctx.node, 1) is not None:
        ctx.block("axes computed at runtime")
        return
    if not axes:
        if ctx.attr("noop_with_empty_axes", 0):
            ctx.emit(0, x)
        else:
            ctx.block("reduces over every axis, channels included")
        return
    axes = [a % rank for a in axes]
    _reduce_axes(ctx, x, axes, bool(ctx.attr("keepdims", 1)))


@rule("ArgMax", "ArgMin")
def arg_reduce(ctx: Context) -> None:
    x = ctx.layout(0)
    if x is None:
        return
    rank = len(ctx.input_shape(0) or ())
    _reduce_axes(ctx, x, [int(ctx.attr("axis", 0)) % rank], bool(ctx.attr("keepdims", 1)))


# Statistics of a normalization over channels (RMSNorm, decomposed LayerNorm).
STATISTICS = ("ReduceMean", "ReduceSumSquare", "ReduceL2")
NORMS_OPTION = "--approximate-norms"


def _reduce_axes(ctx: Context, x: Layout, axes: list[int], keepdims: bool) -> None:
    if x.axis in axes:
        statistic = ctx.node.op_type in STATISTICS and axes == [x.axis]
        if ctx.approximate_norms and statistic:
            # The statistic is computed over the kept channels only: approximate.
            ctx.approximate(x.atoms, "a statistic over the channel axis changes")
            return
        ctx.block("reduces over the channel axis", option=NORMS_OPTION if statistic else None)
        return
    axis = x.axis if keepdims else x.axis - sum(a < x.axis for a in axes)
    ctx.emit(0, Layout(axis, x.atoms))
