"""LSTM, GRU and RNN: the hidden size is one group (both directions together), the input
size is absorbed by W's columns. Real torch exports (classic and dynamo), the masking
oracle, and a torch reference built at the pruned width."""

from __future__ import annotations

import io
import logging
import warnings

import numpy as np
import onnx
import pytest
import torch
from oracle import GraphBuilder, assert_same_outputs, outputs, prune_and_check

import graphprune as gp

logging.getLogger("torch.onnx").setLevel(logging.ERROR)


class Recurrent(torch.nn.Module):
    """Linear -> LSTM/GRU/RNN -> Linear on every step's output."""

    def __init__(self, kind: str, bidirectional: bool, layers: int, batch_first: bool):
        super().__init__()
        self.inp = torch.nn.Linear(6, 10)
        self.rnn = getattr(torch.nn, kind)(
            10, 12, num_layers=layers, bidirectional=bidirectional, batch_first=batch_first
        )
        self.out = torch.nn.Linear(12 * (2 if bidirectional else 1), 5)

    def forward(self, x):
        y, _ = self.rnn(torch.relu(self.inp(x)))
        return self.out(y)


def export(module: torch.nn.Module, args: tuple, dynamo: bool, **options) -> onnx.ModelProto:
    module.eval()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if dynamo:
            program = torch.onnx.export(module, args, dynamo=True, opset_version=18, **options)
            return program.model_proto
        buffer = io.BytesIO()
        torch.onnx.export(module, args, buffer, dynamo=False, opset_version=18, **options)
        return onnx.load_from_string(buffer.getvalue())


def recurrent_groups(analysis):
    cells = ("LSTM", "GRU", "RNN")
    return [g for g in analysis.groups if analysis.view.nodes[g.name].op_type in cells]


@pytest.mark.parametrize(
    ("kind", "bidirectional", "layers", "batch_first", "dynamo"),
    [
        ("LSTM", False, 1, True, False),
        ("LSTM", True, 2, False, False),
        ("LSTM", True, 2, True, True),
        ("GRU", False, 2, False, False),
        ("GRU", True, 1, True, True),
        ("RNN", True, 2, True, False),
        ("RNN", False, 1, False, False),
    ],
)
def test_hidden_size_prunes_exactly(kind, bidirectional, layers, batch_first, dynamo):
    torch.manual_seed(0)
    module = Recurrent(kind, bidirectional, layers, batch_first)
    model = export(module, (torch.randn(3, 4, 6),), dynamo)
    analysis, _plan, pruned = prune_and_check(model, 0.5)
    hidden = recurrent_groups(analysis)
    assert len(hidden) == layers and all(g.prunable and g.channels == 12 for g in hidden)
    assert next(g for g in analysis.groups if g.channels == 10).prunable  # W's input columns
    cells = [n for n in pruned.graph.node if n.op_type == kind]
    assert [onnx.helper.get_attribute_value(a) for n in cells for a in n.attribute
            if a.name == "hidden_size"] == [6] * layers  # fmt: skip
    weights = {t.name: t for t in pruned.graph.initializer}
    gates = {"LSTM": 4, "GRU": 3, "RNN": 1}[kind]
    directions = 2 if bidirectional else 1
    assert list(weights[cells[0].input[2]].dims) == [directions, gates * 6, 6]  # R


def test_pruned_lstm_equals_torch_lstm_built_at_the_kept_width():
    """The reference oracle: torch's own LSTM with only the kept units (their gate rows,
    their R columns, the next layer's input columns) computes what the pruned model does."""
    torch.manual_seed(0)
    module = Recurrent("LSTM", True, 2, False).eval()
    model = gp.load(export(module, (torch.randn(3, 4, 6),), dynamo=False))
    analysis = gp.analyze(model)
    linear = next(g.name for g in analysis.groups if g.channels == 10)
    plan = gp.plan(analysis, gp.PlanOptions(ratio=0.5, ignore=(linear,)))
    pruned = gp.prune(analysis, plan)
    removed = {c.group: c.removed for c in plan.choices}
    layer_kept = [
        np.array(sorted(set(range(12)) - set(removed[g.id]))) for g in recurrent_groups(analysis)
    ]
    small = Recurrent("LSTM", True, 2, False).eval()
    small.rnn = torch.nn.LSTM(10, 6, num_layers=2, bidirectional=True)
    small.out = torch.nn.Linear(12, 5)
    small.inp.load_state_dict(module.inp.state_dict())
    big = dict(module.rnn.named_parameters())
    with torch.no_grad():
        for name, parameter in small.rnn.named_parameters():
            layer = int(name.split("_l")[1][0])
            units = torch.as_tensor(layer_kept[layer])
            rows = torch.cat([units + gate * 12 for gate in range(4)])
            value = big[name][rows]
            if name.startswith("weight_hh"):
                value = value[:, units]
            elif name.startswith("weight_ih") and layer == 1:
                previous = torch.as_tensor(layer_kept[0])
                value = value[:, torch.cat([previous, previous + 12])]
            parameter.copy_(value)
        last = torch.as_tensor(layer_kept[1])
        small.out.weight.copy_(module.out.weight[:, torch.cat([last, last + 12])])
        small.out.bias.copy_(module.out.bias)
    x = torch.randn(3, 4, 6)
    with torch.no_grad():
        expected = small(x).numpy()
    feeds = {model.graph.input[0].name: x.numpy()}
    assert_same_outputs([expected], outputs(pruned, feeds))


def test_state_that_is_a_graph_input_or_output_keeps_the_hidden_size():
    """h0 fed by the caller and h_n returned to it have the hidden size in their shapes:
    the hidden units stay (the input size still prunes)."""

    class Stateful(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.inp = torch.nn.Linear(6, 10)
            self.rnn = torch.nn.GRU(10, 12)
            self.out = torch.nn.Linear(12, 5)

        def forward(self, x, h):
            y, h = self.rnn(torch.relu(self.inp(x)), h)
            return self.out(y), h

    torch.manual_seed(0)
    model = export(Stateful(), (torch.randn(3, 4, 6), torch.randn(1, 4, 12)), dynamo=False)
    analysis, _plan, _pruned = prune_and_check(model, 0.5)
    (hidden,) = recurrent_groups(analysis)
    assert not hidden.prunable
    assert any("initial state" in str(r) for r in hidden.reasons)
    assert next(g for g in analysis.groups if g.channels == 10).prunable


def test_constant_initial_state_and_peepholes_are_sliced():
    """An LSTM with B, a constant initial_h/initial_c and peepholes P (which torch never
    exports), built from the spec: every per-unit parameter loses the removed units."""
    g = GraphBuilder()
    x = g.input([5, 2, 4])
    hidden = 6
    y = g.op("MatMul", [x, g.weight(4, 8)])
    w, r = g.weight(1, 4 * hidden, 8), g.weight(1, 4 * hidden, hidden)
    b, p = g.weight(1, 8 * hidden), g.weight(1, 3 * hidden)
    h0, c0 = g.weight(1, 2, hidden), g.weight(1, 2, hidden)
    outs = g.op("LSTM", [y, w, r, b, "", h0, c0, p], outputs=3, hidden_size=hidden)
    y = g.op("Squeeze", [outs[0], g.const(np.array([1], np.int64))])
    g.output(g.op("MatMul", [y, g.weight(hidden, 3)]))
    analysis, plan, pruned = prune_and_check(g.model(), 0.5)
    (lstm,) = recurrent_groups(analysis)
    assert lstm.prunable
    node = next(n for n in pruned.graph.node if n.op_type == "LSTM")
    weights = {t.name: t for t in pruned.graph.initializer}
    dims = [list(weights[node.input[i]].dims) for i in (3, 5, 6, 7)]
    assert dims == [[1, 24], [1, 2, 3], [1, 2, 3], [1, 9]]  # B, initial_h, initial_c, P
    assert len(plan.choices) == 2
