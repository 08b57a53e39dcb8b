"""Recurrent layers of the lowering (LSTM, GRU, RNN), stepped in Python as the ONNX spec
writes them: gate orders i-o-f-c (LSTM) and z-r-h (GRU), the default activations, both
directions."""

from __future__ import annotations

import torch

from .registry import op

_DEFAULTS = {
    "LSTM": ["Sigmoid", "Tanh", "Tanh"],
    "GRU": ["Sigmoid", "Tanh"],
    "RNN": ["Tanh"],
}


def _check(node, x, lengths):
    kind = node.op_type
    activations = node.attr("activations")
    directions = 2 if node.attr("direction", "forward") == "bidirectional" else 1
    if activations and [a.decode() if isinstance(a, bytes) else a for a in activations] != (
        _DEFAULTS[kind] * directions
    ):
        raise node.refuse("activations other than the defaults are not supported")
    if node.attr("clip") is not None or node.attr("input_forget", 0):
        raise node.refuse("clip and input_forget are not supported")
    steps = x.shape[1] if node.attr("layout", 0) else x.shape[0]
    if lengths is not None and bool((lengths != steps).any()):
        raise node.refuse("sequence_lens shorter than the sequence are not supported")


def _run(node, x, initial, step):
    """Outputs (Y, Y_h[, Y_c]) for `step(direction, x_t, state) -> state`; state[0] is h."""
    layout = node.attr("layout", 0)
    if layout:
        x = x.transpose(0, 1)
    direction = node.attr("direction", "forward")
    orders = {"forward": [False], "reverse": [True], "bidirectional": [False, True]}[direction]
    ys, finals = [], []
    for d, backwards in enumerate(orders):
        state = tuple(s[d] for s in initial)
        outs = []
        times = range(x.shape[0] - 1, -1, -1) if backwards else range(x.shape[0])
        for t in times:
            state = step(d, x[t], state)
            outs.append(state[0])
        if backwards:
            outs.reverse()
        ys.append(torch.stack(outs))  # [seq, batch, hidden]
        finals.append(state)
    y = torch.stack(ys, 1)  # [seq, dirs, batch, hidden]
    last = [torch.stack([f[i] for f in finals]) for i in range(len(initial))]
    if layout:
        y = y.permute(2, 0, 1, 3)
        last = [s.transpose(0, 1) for s in last]
    return (y, *last)[: node.outputs()]


def _initial(node, x, hidden, dirs, given):
    batch = x.shape[0] if node.attr("layout", 0) else x.shape[1]
    if given is None:
        return torch.zeros(dirs, batch, hidden, dtype=x.dtype, device=x.device)
    return given.transpose(0, 1) if node.attr("layout", 0) else given


@op("LSTM", frozen=(4,), scalar_weights=True)
def lstm(node, x, w, r, b=None, lengths=None, h0=None, c0=None, peep=None):
    _check(node, x, lengths)
    dirs, hidden = w.shape[0], r.shape[-1]
    h0, c0 = (_initial(node, x, hidden, dirs, s) for s in (h0, c0))

    def step(d, xt, state):
        h, c = state
        gates = xt @ w[d].T + h @ r[d].T
        if b is not None:
            gates = gates + b[d, : 4 * hidden] + b[d, 4 * hidden :]
        i, o, f, g = gates.chunk(4, -1)
        if peep is not None:
            pi, po, pf = peep[d].chunk(3)
            i, f = i + pi * c, f + pf * c
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        if peep is not None:
            o = o + po * c
        return torch.sigmoid(o) * torch.tanh(c), c

    return _run(node, x, (h0, c0), step)


@op("GRU", frozen=(4,), scalar_weights=True)
def gru(node, x, w, r, b=None, lengths=None, h0=None):
    _check(node, x, lengths)
    dirs, hidden = w.shape[0], r.shape[-1]
    h0 = _initial(node, x, hidden, dirs, h0)
    before_reset = node.attr("linear_before_reset", 0)

    def step(d, xt, state):
        (h,) = state
        wb, rb = (b[d, : 3 * hidden], b[d, 3 * hidden :]) if b is not None else (0, 0)
        xz, xr, xh = (xt @ w[d].T + wb).chunk(3, -1)
        rz, rr, rh = r[d].chunk(3, 0)
        rbz, rbr, rbh = rb.chunk(3) if b is not None else (0, 0, 0)
        z = torch.sigmoid(xz + h @ rz.T + rbz)
        reset = torch.sigmoid(xr + h @ rr.T + rbr)
        if before_reset:
            candidate = torch.tanh(xh + reset * (h @ rh.T + rbh))
        else:
            candidate = torch.tanh(xh + (reset * h) @ rh.T + rbh)
        return ((1 - z) * candidate + z * h,)

    return _run(node, x, (h0,), step)


@op("RNN", frozen=(4,), scalar_weights=True)
def rnn(node, x, w, r, b=None, lengths=None, h0=None):
    _check(node, x, lengths)
    dirs, hidden = w.shape[0], r.shape[-1]
    h0 = _initial(node, x, hidden, dirs, h0)

    def step(d, xt, state):
        gates = xt @ w[d].T + state[0] @ r[d].T
        if b is not None:
            gates = gates + b[d, :hidden] + b[d, hidden:]
        return (torch.tanh(gates),)

    return _run(node, x, (h0,), step)
