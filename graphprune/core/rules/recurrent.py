"""Recurrent layers: LSTM, GRU and RNN, whose hidden size is one group.

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
from .registry import rule

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
            ctx.freeze_own_atoms(f"initial state {ctx.node.input[index]!r} is computed here")
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
