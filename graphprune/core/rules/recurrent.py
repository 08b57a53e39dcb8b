"""Recurrence and control flow: LSTM, GRU and RNN, whose hidden size is one group; If,
Loop and Scan, whose bodies run through the same rules (`registry.walk_body`).

Spec (onnx LSTM/GRU/RNN): X is [seq, batch, input] ([batch, seq, input] with layout=1);
W is [num_directions, gates*hidden, input], R [num_directions, gates*hidden, hidden],
B [num_directions, 2*gates*hidden] (Wb then Rb), P [num_directions, 3*hidden] (LSTM
peepholes, i o f); initial_h/initial_c are [num_directions, batch, hidden] ([batch,
num_directions, hidden] with layout=1). Y is [seq, num_directions, batch, hidden]
([batch, seq, num_directions, hidden]), Y_h and Y_c like initial_h. Gates are stacked
gate-major along W's and R's rows: LSTM i o f c, GRU z r h, RNN one gate; row g*hidden + j
is unit j's gate g. The `hidden_size` attribute must equal the rows per gate.

Hidden unit j only reads unit k through R[:, :, k], so removing a unit is exact: its gate
rows of W, R, B and P go, R's column k is absorbed (the masking oracle zeroes it), and
`hidden_size` becomes the kept count. The input size is absorbed by W's columns.
Both directions keep the same units: `hidden_size` is shared, and Y (and any consumer that
flattens [num_directions, hidden], as torch's bidirectional output does) puts direction d's
unit j at the same position j of every direction, which one layout can only describe when
both directions' unit j is one channel; as Torch-Pruning does, they go together.
"""

from __future__ import annotations

import numpy as np

from ..channels import Layout
from .context import Context
from .registry import rule, walk_body

_GATES = {"LSTM": 4, "GRU": 3, "RNN": 1}
_INITIAL_STATES = {"LSTM": (5, 6), "GRU": (5,), "RNN": (5,)}
_FEATURE_AXIS = 2  # of X, initial_h/c and Y_h/Y_c, with either layout
_Y_HIDDEN_AXIS = 3


@rule("LSTM", "GRU", "RNN")
def recurrent(ctx: Context) -> None:
    """Hidden units are new channels shared by both directions; the input features are
    absorbed by W's columns; initial states carry the hidden units in."""
    gates = _GATES[ctx.node.op_type]
    weights = [ctx.constant_shape(i) for i in (1, 2)]
    hidden = int(ctx.attr("hidden_size", 0))
    tracked = dict(ctx.tracked())
    states = _INITIAL_STATES[ctx.node.op_type]
    if any(i not in (0, *states) for i in tracked):
        ctx.block("channels reach W, R, B, sequence_lens or P")
        return
    if None in weights or any(len(s) != 3 or s[1] != gates * hidden for s in weights):
        ctx.block("W or R is computed at runtime or does not match hidden_size")
        return
    parameters = [i for i in (3, 7) if ctx.view.input(ctx.node, i) is not None]
    if any(ctx.constant(i) is None for i in parameters):
        ctx.block("B or P is computed at runtime")
        return
    x = tracked.get(0)
    if x is not None and x.axis != _FEATURE_AXIS:
        ctx.block("channels on the sequence or batch axis")
        return
    units = ctx.new_atoms(hidden)
    for index in states:
        if ctx.view.input(ctx.node, index) is None:
            continue
        state = tracked.get(index)
        if state is not None and (state.axis != _FEATURE_AXIS or state.size != hidden):
            ctx.block("an initial state carries channels off its hidden axis")
            ctx.freeze_own_atoms("an initial state carries channels off its hidden axis")
            return
        if state is not None:
            ctx.couple(units, state.atoms)
        elif ctx.constant(index) is not None:
            ctx.slice(index, _FEATURE_AXIS, units)
        else:
            name = ctx.node.input[index]
            ctx.freeze_own_atoms(f"initial state {name!r} comes without channels to slice")
    if x is not None:
        ctx.slice(1, 2, x.atoms, role="weight", absorbs=True)
    rows = np.tile(units, gates)
    for index in (1, 2):
        ctx.slice(index, 1, rows, role="weight")
    ctx.slice(2, 2, units, role="weight", absorbs=True)
    if 3 in parameters:
        ctx.slice(3, 1, np.tile(units, 2 * gates), role="bias")
    if 7 in parameters:
        ctx.slice(7, 1, np.tile(units, 3))
    ctx.set_count(ctx.target(attribute="hidden_size"), units)
    ctx.emit(0, Layout(_Y_HIDDEN_AXIS, units))
    for output in range(1, len(ctx.node.output)):
        ctx.emit(output, Layout(_FEATURE_AXIS, units))


def _join(
    ctx: Context,
    first: Layout | None,
    second: Layout | None,
    ranks: list[int | None],
    what: str,
) -> Layout | None:
    """One layout for a value that is either `first` or `second` (an If's two branches, a
    Loop's initial and carried state): on the same axis of the same rank, position i of
    both is one channel (coupled: removal drops it from whichever runs); anything else
    stops both."""
    if first is None and second is None:
        return None
    if (
        first is not None
        and second is not None
        and (first.axis, first.size) == (second.axis, second.size)
        and not (first.tiled or second.tiled or first.count or second.count)
        and None not in ranks
        and len(set(ranks)) == 1
    ):
        ctx.couple(first.atoms, second.atoms)
        return first
    why = f"{what} carry channels on different axes or ranks (or one only)"
    for layout in (first, second):
        if layout is not None:
            ctx.stop(layout.atoms, why)
    return None


def _rank(ctx: Context, tensor: str) -> int | None:
    shape = ctx.view.shape(tensor)
    return None if shape is None else len(shape)


@rule("If", subgraphs=True)
def if_(ctx: Context) -> None:
    """Spec: runs then_branch or else_branch; output i is the taken branch's output i.
    Both branches' output i must hold the channels on the same axis."""
    branches = [ctx.attr("then_branch"), ctx.attr("else_branch")]
    results = [walk_body(ctx, branch, []) for branch in branches]
    for index, (then, other) in enumerate(zip(*results, strict=True)):
        names = [branch.output[index].name for branch in branches]
        ranks = [_rank(ctx, name) for name in names]
        layout = _join(ctx, then, other, ranks, f"the branches' output {index}")
        if layout is not None:
            ctx.emit(index, layout)


@rule("Loop", subgraphs=True)
def loop(ctx: Context) -> None:
    """Spec: inputs M, cond, v_initial...; the body takes (iteration, cond, v...) and
    returns (cond, v..., scan outputs...); the outputs are the final v... and each scan
    output stacked along a new leading axis. A carried value holds the same channels in
    every iteration, so the body's output i and its input i are one layout."""
    tracked = dict(ctx.tracked())
    if 0 in tracked or 1 in tracked:
        ctx.block("channels reach the trip count or the condition")
        ctx.block_subgraph_reads()
        return
    body = ctx.attr("body")
    carried = len(ctx.node.input) - 2
    initial = [ctx.layout(2 + i) for i in range(carried)]
    results = walk_body(ctx, body, [None, None, *initial])
    if results[0] is not None:
        ctx.stop(results[0].atoms, "channels reach the loop condition")
    for i in range(carried):
        names = [ctx.node.input[2 + i], body.input[2 + i].name, body.output[1 + i].name]
        ranks = [_rank(ctx, name) for name in names]
        layout = _join(ctx, initial[i], results[1 + i], ranks, f"the state {i} in and out")
        if layout is not None:
            ctx.emit(i, layout)
    for k, layout in enumerate(results[1 + carried :]):
        _emit_stacked(ctx, carried + k, layout, 0)


@rule("Scan", subgraphs=True)
def scan(ctx: Context) -> None:
    """Spec (opset 9+): inputs are N states then num_scan_inputs sequences, sliced along
    scan_input_axes (default 0) for the body, which returns N states then K slices that
    are stacked along scan_output_axes (default 0). States are a Loop's carried values."""
    body = ctx.attr("body")
    scanned = int(ctx.attr("num_scan_inputs", 0))
    states = len(ctx.node.input) - scanned
    if ctx.view.opset < 9:
        ctx.block("Scan before opset 9 has a batch axis")
        ctx.block_subgraph_reads()
        return
    in_axes = list(ctx.attr("scan_input_axes", None) or [0] * scanned)
    out_axes = list(ctx.attr("scan_output_axes", None) or [0] * (len(body.output) - states))
    inputs = [ctx.layout(i) for i in range(states)]
    for j in range(scanned):
        layout, rank = ctx.layout(states + j), len(ctx.input_shape(states + j) or ())
        axis = in_axes[j] % rank if rank else None
        if layout is not None and (axis is None or layout.axis == axis):
            ctx.stop(layout.atoms, "channels on the scanned axis")
            layout = None
        if layout is not None:
            layout = Layout(layout.axis - (layout.axis > axis), layout.atoms)
        inputs.append(layout)
    results = walk_body(ctx, body, inputs)
    for i in range(states):
        names = [ctx.node.input[i], body.input[i].name, body.output[i].name]
        ranks = [_rank(ctx, name) for name in names]
        layout = _join(ctx, inputs[i], results[i], ranks, f"the state {i} in and out")
        if layout is not None:
            ctx.emit(i, layout)
    for k, layout in enumerate(results[states:]):
        _emit_stacked(ctx, states + k, layout, out_axes[k])


def _emit_stacked(ctx: Context, output: int, layout: Layout | None, axis: int) -> None:
    """A body's per-iteration output stacked along a new `axis` of the node's output."""
    if layout is None:
        return
    rank = len(ctx.output_shape(output) or ())
    if not rank or layout.tiled or layout.count:
        ctx.stop(layout.atoms, "stacked output with channels and an unknown shape")
        return
    axis %= rank
    ctx.emit(output, Layout(layout.axis + (layout.axis >= axis), layout.atoms))
