"""Ops that move axes: Transpose, Squeeze, Unsqueeze, DepthToSpace, SpaceToDepth, Expand,
and Shape (which reads dimensions at runtime). Reshape and Flatten are in `reshape`."""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from ..channels import Layout
from .context import Context
from .registry import rule
from .reshape import runtime_count, shape_entry, surviving_axes, target_entries


@rule("Transpose", tiled=True)
def transpose(ctx: Context) -> None:
    """Output axis i is input axis perm[i] (default: reversed)."""
    x = ctx.layout(0)
    if x is None:
        return
    rank = len(ctx.input_shape(0) or ())
    perm = list(ctx.attr("perm", list(range(rank))[::-1]))
    ctx.emit(0, replace(x, axis=perm.index(x.axis)))


@rule("Squeeze", "Unsqueeze", tiled=True)
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
    kept_in = surviving_axes(ctx.view, ctx.node)
    if kept_in is None or x.axis not in kept_in:
        ctx.block("axes unknown" if kept_in is None else "squeezes the channel axis")
        return
    ctx.emit(0, replace(x, axis=kept_in[x.axis]))


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
    """The output holds the input's dims. The channel dim, read at runtime, follows the
    pruned count: it becomes a count layout, which only count rules pass on and only a
    consumer that needs exactly that count (a reshape target at the channel axis) takes."""
    x = ctx.layout(0)
    if x is None:
        return
    start = int(ctx.attr("start", 0))
    rank = len(ctx.input_shape(0) or ())
    end = int(ctx.attr("end", rank))
    start, end, _ = slice(start, end).indices(rank)
    if start <= x.axis < end:
        ctx.emit(0, Layout(x.axis - start, x.atoms, x.tiled, count=True))


@rule("Expand", count_inputs=(1,))
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
    target = target_entries(ctx.view, ctx.view.input(ctx.node, 1))
    if target is None:
        ctx.block("target shape unknown")
        return
    axis = x.axis + out_rank - in_rank
    entry = axis - (out_rank - len(target))
    value = target[entry] if entry >= 0 else 1
    if value not in (1, x.size):
        ctx.block("target shape at the channel axis is not a constant 1 or the channel count")
        return
    if value == x.size and x.size != 1 and not runtime_count(ctx, 1, entry, x.atoms, x.tiled):
        where = shape_entry(ctx, 1, entry)
        if isinstance(where, str):
            ctx.block(where)
            return
        if where is not None:
            ctx.set_count(where, x.atoms)
    ctx.emit(0, Layout(axis, x.atoms))
