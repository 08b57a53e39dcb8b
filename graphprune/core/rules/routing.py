"""Ops that route channels without mixing them: Concat, Split, Slice, Gather, Resize, Pad,
Tile, Expand.

Along the channel axis Concat, Split and Slice map indices by offsets (DenseNet, Inception,
YOLOv8 C2f); the constants holding split sizes and slice bounds are rewritten to count the
kept channels before each boundary.
"""

from __future__ import annotations

import numpy as np

from ..channels import Layout
from .context import Context
from .registry import rule


def _normalized_axis(ctx: Context, axis: int, index: int = 0) -> int:
    rank = len(ctx.input_shape(index) or ctx.output_shape() or ())
    return axis % rank if rank else axis


@rule("Concat")
def concat(ctx: Context) -> None:
    """Along the channel axis the output layout is the inputs' layouts end to end (inputs
    without tracked channels contribute positions that cannot be removed). Along another
    axis, every input must carry the same channels, which couples them."""
    tracked = ctx.tracked()
    if not tracked:
        return
    axis = _normalized_axis(ctx, int(ctx.attr("axis")))
    if all(layout.axis == axis for _, layout in tracked):
        pieces = []
        for index, name in enumerate(ctx.node.input):
            layout = ctx.layout(index)
            if layout is not None:
                pieces.append(layout.atoms)
                continue
            shape = ctx.input_shape(index)
            if shape is None or not isinstance(shape[axis], int):
                ctx.block(f"size of input {name!r} along the channel axis unknown")
                return
            pieces.append(ctx.opaque_atoms(shape[axis], f"concatenated with untracked {name!r}"))
        ctx.emit(0, Layout(axis, np.concatenate(pieces)))
        return
    first = tracked[0][1]
    if len(tracked) != len(ctx.node.input) or any(
        layout.axis != first.axis or layout.size != first.size for _, layout in tracked
    ):
        ctx.block("inputs carry channels on different axes")
        return
    for _, layout in tracked[1:]:
        ctx.couple(first.atoms, layout.atoms)
    ctx.emit(0, first)


@rule("Split")
def split(ctx: Context) -> None:
    """Output j takes the next sizes[j] positions of the split axis; sizes come from the
    `split` input (opset 13+), the attribute (before), or equal parts (num_outputs)."""
    x = ctx.data_layout()
    if x is None:
        return
    axis = _normalized_axis(ctx, int(ctx.attr("axis", 0)))
    if x.axis != axis:
        for output in range(len(ctx.node.output)):
            ctx.emit(output, x)
        return
    sizes = [
        shape[axis] if shape else None
        for shape in map(ctx.output_shape, range(len(ctx.node.output)))
    ]
    if not all(isinstance(s, int) for s in sizes) or sum(sizes) != x.size:
        ctx.block("split sizes unknown")
        return
    from_input = ctx.view.opset >= 13
    offset = 0
    for output, size in enumerate(sizes):
        atoms = x.atoms[offset : offset + size]
        offset += size
        target = ctx.target(
            input_index=1 if from_input else None,
            attribute=None if from_input else "split",
            entry=output,
            fallback=tuple(sizes),
        )
        ctx.set_count(target, atoms)
        ctx.nonempty(atoms)
        ctx.emit(output, Layout(axis, atoms))


@rule("Slice")
def slice_(ctx: Context) -> None:
    """Opset 10+: starts, ends, axes, steps are inputs 1-4 (before: attributes). A unit
    step range [s, e) on the channel axis keeps positions s..e-1; its new bounds count the
    kept positions before s and before e."""
    x = ctx.data_layout()
    if x is None:
        return
    view = ctx.view
    starts = view.int_list(ctx.node, 1, "starts")
    ends = view.int_list(ctx.node, 2, "ends")
    rank = len(ctx.input_shape(0) or ())
    axes = view.int_list(ctx.node, 3, "axes")
    if starts is None or ends is None or (axes is None and view.input(ctx.node, 3)):
        ctx.block("slice bounds computed at runtime")
        return
    axes = [a % rank for a in (axes if axes is not None else range(len(starts)))]
    if x.axis not in axes:
        ctx.emit(0, x)
        return
    entry = axes.index(x.axis)
    steps = view.int_list(ctx.node, 4, "steps") or [1] * len(starts)
    if steps[entry] != 1:
        ctx.block("strided slice along the channel axis")
        return
    start, end, _ = slice(starts[entry], ends[entry]).indices(x.size)
    end = max(start, end)
    from_input = view.opset >= 10
    for index, name, bound in ((1, "starts", start), (2, "ends", end)):
        target = ctx.target(
            input_index=index if from_input else None,
            attribute=None if from_input else name,
            entry=entry,
        )
        ctx.set_count(target, x.atoms[:bound])
    kept = x.atoms[start:end]
    ctx.nonempty(kept)
    ctx.emit(0, Layout(x.axis, kept))


@rule("Gather")
def gather(ctx: Context) -> None:
    """Gathering along another axis replaces that axis by the indices' axes. Rows of a
    constant 2-D table gathered by computed indices are an embedding lookup: its columns
    are new channels (a transformer's hidden size), on the output's last axis."""
    table = ctx.constant_shape(0)
    if table is not None and len(table) == 2 and ctx.attr("axis", 0) == 0 and not ctx.tracked():
        if ctx.constant_shape(1) is None:
            out = ctx.new_atoms(table[1])
            ctx.slice(0, 1, out, role="weight")
            ctx.mark_embedding(out)
            ctx.emit(0, Layout(len(ctx.input_shape(1) or ()), out))
        return
    x = ctx.data_layout()
    if x is None:
        return
    axis = _normalized_axis(ctx, int(ctx.attr("axis", 0)))
    if x.axis == axis:
        ctx.block("gathers along the channel axis")
        return
    index_rank = len(ctx.input_shape(1) or ())
    ctx.emit(0, Layout(x.axis if x.axis < axis else x.axis + index_rank - 1, x.atoms))


@rule("Resize", "Upsample")
def resize(ctx: Context) -> None:
    """Resize interpolates each (sample, channel) plane: the channel scale must be 1; a
    `sizes` input names the channel count, which is rewritten. Since opset 18 `axes` may
    restrict scales and sizes to some axes."""
    x = ctx.data_layout()
    if x is None:
        return
    rank = len(ctx.input_shape(0) or ())
    axes = [a % rank for a in ctx.attr("axes", range(rank))]
    if x.axis not in axes:
        ctx.emit(0, x)
        return
    entry = axes.index(x.axis)
    upsample = ctx.node.op_type == "Upsample"
    scales_index = 1 if upsample or ctx.view.opset == 10 else 2
    scales = ctx.constant(scales_index) if ctx.view.input(ctx.node, scales_index) else None
    if scales is None and upsample:
        scales = np.asarray(ctx.attr("scales", []), dtype=np.float32)
    if scales is not None and scales.size:
        if float(scales.reshape(-1)[entry]) != 1.0:
            ctx.block("resizes the channel axis")
            return
    elif not upsample and ctx.constant(3) is not None:
        ctx.set_count(ctx.target(input_index=3, entry=entry), x.atoms)
    else:
        ctx.block("scales or sizes computed at runtime")
        return
    ctx.emit(0, x)


@rule("Pad")
def pad(ctx: Context) -> None:
    """Padding must leave the channel axis alone (pads are [begin..., end...])."""
    x = ctx.data_layout()
    if x is None:
        return
    pads = ctx.view.int_list(ctx.node, 1, "pads")
    if pads is None:
        ctx.block("pads computed at runtime")
        return
    rank = len(ctx.input_shape(0) or ())
    axes = ctx.view.int_list(ctx.node, 3, None)
    axes = [a % rank for a in axes] if axes is not None else list(range(rank))
    if x.axis in axes:
        entry = axes.index(x.axis)
        if pads[entry] != 0 or pads[entry + len(axes)] != 0:
            ctx.block("pads the channel axis")
            return
    ctx.emit(0, x)


@rule("Tile")
def tile(ctx: Context) -> None:
    x = ctx.layout(0)
    if x is None:
        return
    repeats = ctx.constant(1)
    if repeats is None or int(repeats.reshape(-1)[x.axis]) != 1:
        ctx.block("tiles the channel axis")
        return
    ctx.emit(0, x)
