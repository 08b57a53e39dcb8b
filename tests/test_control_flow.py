"""Channels through If, Loop and Scan: bodies run through the same rules, edits inside
bodies reach the rewrite and the masking oracle, and what is not mapped exactly stays a
barrier with its reason. Real exports: torch.jit.script (If, Loop) by the classic
exporter, torch.cond (If) by the dynamo one, and the Silero VAD models."""

from __future__ import annotations

import io
import logging
import warnings

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper
from oracle import GraphBuilder, assert_same_outputs, outputs, prune_and_check

import graphprune as gp
from graphprune.core.metrics import count_params
from graphprune.io.protos import all_graphs

logging.getLogger("torch.onnx").setLevel(logging.ERROR)


class Branches(torch.nn.Module):
    """A data-dependent branch: both arms read the stem's channels and return new ones."""

    def __init__(self):
        super().__init__()
        self.stem = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.a = torch.nn.Conv2d(8, 8, 3, padding=1)
        self.b = torch.nn.Conv2d(8, 8, 1)
        self.head = torch.nn.Conv2d(8, 4, 1)

    def forward(self, x):
        y = torch.relu(self.stem(x))
        # torch.jit.script keeps the data-dependent choice: an If with two branches.
        z = torch.relu(self.a(y)) if bool(x.mean() > 0.0) else self.b(y) * 2.0
        return self.head(z)


class CondBranches(Branches):
    def forward(self, x):
        y = torch.relu(self.stem(x))
        z = torch.cond(
            x.mean() > 0, lambda t: torch.relu(self.a(t)), lambda t: self.b(t) * 2.0, (y,)
        )
        return self.head(z)


class Repeat(torch.nn.Module):
    """A residual block applied n times (a Loop whose carried state is the residual)."""

    def __init__(self):
        super().__init__()
        self.stem = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.body = torch.nn.Conv2d(8, 8, 3, padding=1)
        self.head = torch.nn.Conv2d(8, 4, 1)

    def forward(self, x, n: int):
        y = torch.relu(self.stem(x))
        for _ in range(n):
            y = torch.relu(self.body(y)) + y
        return self.head(y)


def scripted(module: torch.nn.Module, args: tuple, names: list[str]) -> onnx.ModelProto:
    buffer = io.BytesIO()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        scripted_module = torch.jit.script(module.eval())
        torch.onnx.export(
            scripted_module, args, buffer, dynamo=False, opset_version=18, input_names=names
        )
    return onnx.load_from_string(buffer.getvalue())


def body_node_names(model: onnx.ModelProto) -> set[str]:
    return {n.name for g in list(all_graphs(model.graph))[1:] for n in g.node}


def check_oracle(analysis, plan, pruned, feeds) -> None:
    assert_same_outputs(outputs(gp.mask(analysis, plan), feeds), outputs(pruned, feeds))


def both_signs(shape) -> list[dict]:
    """Inputs that take each branch of `x.mean() > 0`."""
    x = np.random.default_rng(0).random(shape, dtype=np.float32)
    return [{"x": x + 0.5}, {"x": x - 1.5}]


@pytest.mark.parametrize("dynamo", [False, True])
def test_if_branches_prune_exactly(dynamo):
    torch.manual_seed(0)
    x = torch.randn(1, 3, 8, 8)
    if dynamo:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            program = torch.onnx.export(
                CondBranches().eval(), (x,), dynamo=True, opset_version=18, input_names=["x"]
            )
        model = program.model_proto
    else:
        model = scripted(Branches(), (x,), ["x"])
    assert any(n.op_type == "If" for n in model.graph.node)
    feeds = both_signs((1, 3, 8, 8))
    analysis, plan, pruned = prune_and_check(model, 0.5, feeds=feeds[0])
    check_oracle(analysis, plan, pruned, feeds[1])
    assert [g.channels for g in analysis.prunable_groups] == [8, 8]
    # The branches' convolutions are one group: the If output is either of them.
    bodies = body_node_names(gp.load(model))
    branch_group = next(g for g in analysis.prunable_groups if set(g.sources) & bodies)
    assert len(set(branch_group.sources) & bodies) == 2
    convs = [n for g in all_graphs(pruned.graph) for n in g.node if n.op_type == "Conv"]
    weights = {t.name: list(t.dims) for g in all_graphs(pruned.graph) for t in g.initializer}
    # stem 8 -> 4 outputs; both branch convs 8 -> 4 in and out; the head 8 -> 4 inputs.
    assert sorted(weights[c.input[1]][:2] for c in convs) == [[4, 3], [4, 4], [4, 4], [4, 4]]


def test_loop_carried_state_prunes_exactly():
    torch.manual_seed(0)
    model = scripted(Repeat(), (torch.randn(1, 3, 8, 8), 3), ["x", "n"])
    assert any(n.op_type == "Loop" for n in model.graph.node)
    x = np.random.default_rng(0).standard_normal((1, 3, 8, 8)).astype(np.float32)
    for n in (0, 1, 3):
        feeds = {"x": x, "n": np.array(n, dtype=np.int64)}
        analysis, _plan, pruned = prune_and_check(model, 0.5, feeds=feeds)
    (stem,) = analysis.prunable_groups
    body = body_node_names(gp.load(model))
    assert len(set(stem.sources) & body) == 1  # the body's conv adds to the carried state
    body_conv = next(n for g in list(all_graphs(pruned.graph))[1:] for n in g.node
                     if n.op_type == "Conv")  # fmt: skip
    weights = {t.name: list(t.dims) for g in all_graphs(pruned.graph) for t in g.initializer}
    assert weights[body_conv.input[1]][:2] == [4, 4]


def _if_model(else_output: str) -> onnx.ModelProto:
    """conv -> If(cond: then Relu(y), else `else_output`) -> conv head."""
    g = GraphBuilder()
    x = g.input([1, 3, 6, 6])
    flag = g.input([], "flag")
    g.inputs[-1] = helper.make_tensor_value_info("flag", TensorProto.BOOL, [])
    y = g.conv(x, 3, 8)
    then = helper.make_graph(
        [helper.make_node("Relu", [y], ["then_out"], name="then_relu")], "then", [],
        [helper.make_tensor_value_info("then_out", TensorProto.FLOAT, [1, 8, 6, 6])],
    )  # fmt: skip
    if else_output == "sigmoid":
        other = [helper.make_node("Sigmoid", [y], ["else_out"], name="else_sigmoid")]
    else:  # a value without channels: the positions cannot go
        zeros = helper.make_tensor("zeros", TensorProto.FLOAT, [1, 8, 6, 6], [0.0] * 288)
        other = [helper.make_node("Constant", [], ["else_out"], name="else_zero", value=zeros)]
    other_graph = helper.make_graph(
        other, "else", [], [helper.make_tensor_value_info("else_out", TensorProto.FLOAT, None)]
    )
    g.nodes.append(
        helper.make_node("If", [flag], ["z"], name="if", then_branch=then, else_branch=other_graph)
    )
    g.output(g.conv("z", 8, 2, k=1))
    return g.model()


def test_if_branches_that_disagree_are_a_barrier_with_the_reason():
    feeds = {"x": np.ones((1, 3, 6, 6), np.float32)}
    for flag in (True, False):
        model = _if_model("sigmoid")
        feeds["flag"] = np.array(flag)
        analysis, _plan, _pruned = prune_and_check(model, 0.5, feeds=dict(feeds))
        assert [g.channels for g in analysis.prunable_groups] == [8]
    analysis = gp.analyze(gp.load(_if_model("zeros")))
    (stem, _head) = analysis.groups
    assert not stem.prunable
    assert "If 'if': the branches' output 0 carry channels" in str(stem.reasons[0])


def test_scan_states_and_slices_prune_exactly():
    """A Scan over axis 1 of [1, 5, 8] features: the state and each slice are added, the
    stacked output goes on axis 1 (scan_output_axes) to a linear head."""
    g = GraphBuilder()
    x = g.input([1, 5, 4])
    x0 = g.input([1, 4], "x0")
    seq = g.op("MatMul", [x, g.weight(4, 8)])
    state = g.op("MatMul", [x0, g.weight(4, 8)])
    body = helper.make_graph(
        [helper.make_node("Add", ["s_in", "x_t"], ["sum"], name="body_add"),
         helper.make_node("Tanh", ["sum"], ["s_out"], name="body_tanh"),
         helper.make_node("Identity", ["s_out"], ["y_t"], name="body_copy")],
        "body",
        [helper.make_tensor_value_info("s_in", TensorProto.FLOAT, [1, 8]),
         helper.make_tensor_value_info("x_t", TensorProto.FLOAT, [1, 8])],
        [helper.make_tensor_value_info("s_out", TensorProto.FLOAT, [1, 8]),
         helper.make_tensor_value_info("y_t", TensorProto.FLOAT, [1, 8])],
    )  # fmt: skip
    g.nodes.append(
        helper.make_node("Scan", [state, seq], ["final", "ys"], name="scan", body=body,
                         num_scan_inputs=1, scan_input_axes=[1], scan_output_axes=[1])
    )  # fmt: skip
    g.output(g.op("MatMul", ["ys", g.weight(8, 3)]))
    g.output(g.op("MatMul", ["final", g.weight(8, 3)]))
    analysis, _plan, pruned = prune_and_check(g.model(), 0.5)
    (group,) = analysis.prunable_groups
    assert group.channels == 8 and len(group.sources) == 2
    assert count_params(pruned) < count_params(g.model())


def test_branches_that_define_one_name_are_a_barrier():
    """Sibling branches may define the same tensor name in ONNX; layouts are kept by name,
    so such subgraphs are not walked and the channels they read stop at the If."""
    g = GraphBuilder()
    x = g.input([1, 3, 6, 6])
    y = g.conv(x, 3, 8)
    body = helper.make_graph(
        [helper.make_node("Relu", [y], ["r"], name="inner")], "b", [],
        [helper.make_tensor_value_info("r", TensorProto.FLOAT, [1, 8, 6, 6])],
    )  # fmt: skip
    g.inputs.append(helper.make_tensor_value_info("flag", TensorProto.BOOL, []))
    g.nodes.append(
        helper.make_node("If", ["flag"], ["z"], name="if", then_branch=body, else_branch=body)
    )
    g.output(g.conv("z", 8, 2, k=1))
    analysis = gp.analyze(gp.load(g.model()))
    assert not analysis.groups[0].prunable
    assert "two subgraphs define the same tensor name" in str(analysis.groups[0].reasons)


_8K = {"sr": np.array(8000, np.int64), "input": np.linspace(-1, 1, 256, dtype=np.float32)[None]}
SILERO = {  # name -> (a group that must prune, inputs that take the other sample rate)
    "silero_vad": ("If_0_then_branch__Inline_0__/encoder/2/reparam_conv/Conv", _8K),
    "silero_vad_half": ("/encoder/2/reparam_conv/Conv", None),
    "silero_vad_ifless": ("node_conv1d_4", _8K),
    "silero_vad_fw": ("/encoder/conv_layers.3/Conv", None),
}


@pytest.mark.parametrize("name", sorted(SILERO))
def test_silero_vad_prunes_inside_its_branches_exactly(name):
    """The real Silero VAD models: convolutions inside If branches (silero_vad keeps each
    sample rate's model in a branch), and the encoder that feeds the LSTM (the LSTM's
    input size), prune; both sample rates' branches match the oracle."""
    thirdparty = pytest.importorskip("thirdparty")
    try:
        path = thirdparty.fetch(name)
    except thirdparty.ThirdPartyUnavailable as error:
        pytest.skip(str(error))
    model = gp.load(path)
    analysis = gp.analyze(model)
    must, other_rate = SILERO[name]
    assert next(g for g in analysis.groups if must in g.sources).prunable
    plan = gp.plan(analysis, 0.5)
    pruned = gp.prune(analysis, plan)
    feeds = thirdparty.validation_input(name)
    check_oracle(analysis, plan, pruned, feeds)
    if other_rate is not None:
        check_oracle(analysis, plan, pruned, {**feeds, **other_rate})
    assert count_params(pruned) < 0.85 * count_params(model)


def test_loop_scan_outputs_stack_channels_on_a_new_leading_axis():
    """A Loop's scan output (each iteration's [1, 8] result, stacked to [M, 1, 8]) keeps the
    channels one axis further out; the carried counter-like state has none."""
    g = GraphBuilder()
    x = g.input([1, 4])
    features = g.op("MatMul", [x, g.weight(4, 8)])
    body = helper.make_graph(
        [helper.make_node("Relu", [features], ["step"], name="body_relu"),
         helper.make_node("Identity", ["cond_in"], ["cond_out"], name="body_cond")],
        "body",
        [helper.make_tensor_value_info("i", TensorProto.INT64, []),
         helper.make_tensor_value_info("cond_in", TensorProto.BOOL, [])],
        [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
         helper.make_tensor_value_info("step", TensorProto.FLOAT, [1, 8])],
    )  # fmt: skip
    trips, always = g.const(np.array(3, np.int64)), g.const(np.array(True))
    g.nodes.append(helper.make_node("Loop", [trips, always], ["steps"], name="loop", body=body))
    g.output(g.op("MatMul", ["steps", g.weight(8, 3)]))
    analysis, _plan, pruned = prune_and_check(g.model(), 0.5)
    (group,) = analysis.prunable_groups
    assert group.channels == 8
    head = next(n for n in pruned.graph.node if n.op_type == "MatMul" and n.input[0] == "steps")
    weights = {t.name: list(t.dims) for t in pruned.graph.initializer}
    assert weights[head.input[1]] == [4, 3]


def test_a_subgraph_rule_that_fails_leaves_its_bodies_whole(monkeypatch):
    """When an If's rule fails after its branches were walked, what the branches read and
    made stays (their edits would otherwise slice one side of a pair)."""
    from graphprune.core.rules import recurrent

    def failing(*args):
        raise ValueError("no join")

    monkeypatch.setattr(recurrent, "_join", failing)
    torch.manual_seed(0)
    model = scripted(Branches(), (torch.randn(1, 3, 8, 8),), ["x"])
    for feeds in both_signs((1, 3, 8, 8)):
        analysis, _plan, _pruned = prune_and_check(model, 0.5, feeds=feeds)
    assert not analysis.prunable_groups
    reasons = " ".join(str(r) for g in analysis.groups for r in g.reasons)
    assert "is read inside a subgraph (its subgraphs could not be mapped)" in reasons
    assert "made in a subgraph that could not be mapped" in reasons
