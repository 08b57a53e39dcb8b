"""Normalization and softmax-like ops.

Per-channel normalizations (BatchNormalization, InstanceNormalization) slice their
per-channel parameters. GroupNormalization normalizes groups of channels together, so a
channel can only leave with its whole group. Ops whose statistics run *over* the channel
axis (LayerNormalization over it, Softmax along it, LRN) would change the values of the
channels that stay: they are barriers, except a router's softmax over experts (`moe`).
"""

from __future__ import annotations

from ..channels import Layout
from .context import Context
from .moe import router_softmax
from .reduction import NORMS_OPTION
from .registry import rule


def _channel_axis_only(ctx: Context) -> Layout | None:
    x = ctx.data_layout()
    if x is not None and x.axis != 1:
        ctx.block("channels are not on axis 1")
        return None
    return x


@rule("BatchNormalization")
def batch_norm(ctx: Context) -> None:
    """Inputs scale, B, mean, var are all (C,)."""
    x = _channel_axis_only(ctx)
    if x is None:
        return
    for index in range(1, 5):
        ctx.slice(index, 0, x.atoms, role="bn_scale" if index == 1 else "param")
    ctx.emit(0, x)


@rule("InstanceNormalization")
def instance_norm(ctx: Context) -> None:
    """Statistics per (sample, channel); scale and B are (C,)."""
    x = _channel_axis_only(ctx)
    if x is None:
        return
    ctx.slice(1, 0, x.atoms, role="weight")
    ctx.slice(2, 0, x.atoms)
    ctx.emit(0, x)


@rule("GroupNormalization")
def group_norm(ctx: Context) -> None:
    """Statistics per (sample, group of C/num_groups channels): the channels of a group
    are coupled and num_groups counts the groups kept. scale and bias are (C,) since
    opset 21, (num_groups,) before."""
    x = _channel_axis_only(ctx)
    if x is None:
        return
    groups = int(ctx.attr("num_groups"))
    blocks = x.atoms.reshape(groups, -1)
    for row in blocks:
        ctx.couple_all(row)
    heads = blocks[:, 0]
    ctx.set_count(ctx.target(attribute="num_groups"), heads)
    for index in (1, 2):
        shape = ctx.input_shape(index)
        per_group = shape is not None and shape[0] == groups and groups != x.size
        ctx.slice(
            index, 0, heads if per_group else x.atoms, role="weight" if index == 1 else "param"
        )
    ctx.emit(0, x)


def _stops_if_normalized(
    ctx: Context, normalized: set[int], what: str, option: str | None = None
) -> None:
    x = ctx.data_layout()
    if x is None:
        return
    if x.axis in normalized:
        ctx.block(f"{what} over the channel axis: removing channels changes the others", option)
        return
    ctx.emit(0, x)


def _normalized_from(ctx: Context, axis: int) -> set[int]:
    rank = len(ctx.input_shape(0) or ())
    axis = axis % rank if rank else axis
    return set(range(axis, rank))


@rule("SimplifiedLayerNormalization", domain="com.microsoft")
@rule("LayerNormalization", "RMSNormalization", "SimplifiedLayerNormalization")
def layer_norm(ctx: Context) -> None:
    """Normalizes over axes [axis, rank); scale and bias cover exactly those axes. Over the
    channel axis alone it is a barrier unless approximate norms were asked for: then the
    channels go, scale and bias are sliced, and the group is marked approximate.
    onnxruntime's SimplifiedLayerNormalization (RMSNorm, also written into the default
    domain by its transformer optimizer) has the same inputs and axis."""
    normalized = _normalized_from(ctx, int(ctx.attr("axis", -1)))
    x = ctx.layout(0)
    if x is None or not ctx.approximate_norms or normalized != {x.axis}:
        liftable = x is not None and normalized == {x.axis}
        _stops_if_normalized(ctx, normalized, "normalizes", NORMS_OPTION if liftable else None)
        return
    if ctx.data_layout() is None:
        return
    for index in (1, 2):
        shape = ctx.input_shape(index)
        if ctx.view.input(ctx.node, index) is not None and shape and shape[-1] == x.size:
            if ctx.constant(index) is None:
                ctx.block("scale or bias computed at runtime")
                return
            ctx.slice(index, len(shape) - 1, x.atoms, role="weight" if index == 1 else "param")
    ctx.approximate(x.atoms, "normalizes over the channel axis (statistics change)")
    ctx.emit(0, x)


@rule("MeanVarianceNormalization")
def mean_variance_norm(ctx: Context) -> None:
    rank = len(ctx.input_shape(0) or ())
    axes = {a % rank for a in ctx.attr("axes", [0, 2, 3])}
    _stops_if_normalized(ctx, axes, "normalizes")


@rule("Softmax", "LogSoftmax", "Hardmax", tiled=True)
def softmax(ctx: Context) -> None:
    """Since opset 13 along one axis (default -1); before, over the input flattened to 2-D
    at `axis` (default 1), i.e. over every axis from `axis` on."""
    rank = len(ctx.input_shape(0) or ())
    if ctx.view.opset >= 13:
        normalized = {int(ctx.attr("axis", -1)) % rank}
    else:
        normalized = _normalized_from(ctx, int(ctx.attr("axis", 1)))
    x = ctx.layout(0)
    router = ctx.node.op_type == "Softmax" and x is not None and not x.tiled
    if router and normalized == {x.axis} and router_softmax(ctx, x):
        return
    _stops_if_normalized(ctx, normalized, "normalizes")


@rule("LRN")
def lrn(ctx: Context) -> None:
    """Local response normalization sums squares across neighbouring channels."""
    _stops_if_normalized(ctx, {1}, "sums across neighbouring channels")


@rule("CumSum")
def cumsum(ctx: Context) -> None:
    axis = ctx.constant(1)
    if axis is None:
        ctx.block("axis computed at runtime")
        return
    rank = len(ctx.input_shape(0) or ())
    _stops_if_normalized(ctx, {int(axis) % rank}, "accumulates")


@rule("SkipLayerNormalization", "SkipSimplifiedLayerNormalization", domain="com.microsoft")
def skip_layer_norm(ctx: Context) -> None:
    """onnxruntime: s = input + skip (+ bias); output 0 is s normalized over the last axis,
    times gamma (plus beta), output 3 is s itself. Input and skip add position by position;
    gamma, beta and bias are per last-axis position. Over the channel axis it is a barrier
    unless approximate norms were asked for (as LayerNormalization)."""
    tracked = dict(ctx.tracked())
    if any(index > 1 for index in tracked):
        ctx.block("channels reach gamma, beta or bias")
        return
    x = tracked.get(0) or tracked.get(1)
    if x is None:
        return
    # The output has the input's shape (its own may be left unknown by inference).
    rank = len(ctx.input_shape(0 if 0 in tracked else 1))
    if x.axis == rank - 1 and not ctx.approximate_norms:
        reason = "normalizes over the channel axis: removing channels changes the others"
        ctx.block(reason, option=NORMS_OPTION)
        return
    if len(tracked) == 2:
        ctx.couple(tracked[0].atoms, tracked[1].atoms)
    else:
        other = 1 - next(iter(tracked))
        shape = ctx.input_shape(other) or ()
        axis = x.axis - rank + len(shape)
        if axis >= 0 and shape[axis] != 1:
            if ctx.constant(other) is None:
                ctx.block("the other addend is computed from untracked channels")
                return
            ctx.slice(other, axis, x.atoms)
    if x.axis == rank - 1:
        for index in (2, 3, 4):
            if ctx.view.input(ctx.node, index) is not None:
                if ctx.constant(index) is None:
                    ctx.block("gamma, beta or bias computed at runtime")
                    return
                ctx.slice(index, 0, x.atoms, role="weight" if index == 2 else "param")
        ctx.approximate(x.atoms, "normalizes over the channel axis (statistics change)")
    for output in (0, 3):
        ctx.emit(output, x)


@rule("EmbedLayerNormalization", domain="com.microsoft")
def embed_layer_norm(ctx: Context) -> None:
    """onnxruntime's BERT embeddings: word, position and segment tables (inputs 2, 3, 4,
    [rows, hidden]) looked up by ids, added, and normalized over the hidden size with
    gamma and beta (5, 6); output 0 is normalized, output 2 the sum before it (output 1,
    the mask index, is per sequence). The hidden size is new channels here (kind
    "hidden"): every table loses columns and gamma and beta entries. The normalization
    runs over them, so they stay unless approximate norms were asked for (as
    LayerNormalization)."""
    if ctx.tracked():
        ctx.block("channels reach the ids, mask or tables")
        return
    tables = [index for index in (2, 3, 4) if ctx.view.input(ctx.node, index) is not None]
    shapes = [ctx.constant_shape(index) for index in (*tables, 5, 6)]
    if any(shape is None for shape in shapes) or len({shape[-1] for shape in shapes}) != 1:
        return  # tables computed at runtime: the hidden size is no group here
    out = ctx.new_atoms(shapes[0][-1])
    for index in tables:
        ctx.slice(index, 1, out, role="weight" if index == 2 else "param")
    ctx.slice(5, 0, out, role="weight")
    ctx.slice(6, 0, out)
    ctx.mark_embedding(out)
    if ctx.approximate_norms:
        ctx.approximate(out, "normalizes over the hidden size (statistics change)")
    else:
        reason = "normalizes over the hidden size: removing some changes the rest"
        ctx.freeze_own_atoms(reason, NORMS_OPTION)
    rank = len(ctx.output_shape() or (0, 0, 0))
    ctx.emit(0, Layout(rank - 1, out))
    ctx.emit(2, Layout(rank - 1, out))
