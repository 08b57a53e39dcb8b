"""Graphs beyond plain exports are decided during analysis, never after the rewrite:
channels read inside subgraphs, onnxruntime contrib ops in the default
domain, unknown shapes. Each prunes what it can, runs, and names what it keeps."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper
from oracle import GraphBuilder, outputs, prune_and_check

import graphprune as gp
from graphprune.runtime.inputs import input_shapes, random_inputs


def _reasons(analysis) -> str:
    return " ".join(str(r) for grp in analysis.groups for r in grp.reasons)


def test_channels_that_leave_if_branches_on_different_axes_stop_at_the_if():
    """Both branches read the channels (If bodies run through the rules), but one returns
    them on axis 1 and the other, transposed, on axis 2: no one layout says which goes."""
    g = GraphBuilder()
    x = g.input([1, 3, 8, 8])
    read_inside = g.conv(x, 3, 8)
    free = g.conv(x, 3, 6)
    branch = [helper.make_node("Relu", [read_inside], ["r"])]
    then = helper.make_graph(
        branch, "then", [], [helper.make_tensor_value_info("r", TensorProto.FLOAT, None)]
    )
    other = [helper.make_node("Transpose", [read_inside], ["s"], perm=[0, 2, 1, 3])]
    otherwise = helper.make_graph(
        other, "else", [], [helper.make_tensor_value_info("s", TensorProto.FLOAT, None)]
    )
    chosen = g.op("If", [g.const(np.array(True))], then_branch=then, else_branch=otherwise)
    g.output(g.conv(g.op("Concat", [g.conv(chosen, 8, 4), g.conv(free, 6, 4)], axis=1), 8, 2, k=1))
    model = gp.load(g.model())
    analysis, _, pruned = prune_and_check(model)
    assert "the branches' output 0 carry channels on different axes" in _reasons(analysis)
    kept = [
        grp
        for grp in analysis.groups
        if not grp.prunable and "branches" in " ".join(map(str, grp.reasons))
    ]
    assert [grp.channels for grp in kept] == [8]
    assert len(analysis.prunable_groups) >= 1
    onnx.checker.check_model(pruned, full_check=True)


def test_contrib_ops_in_the_default_domain_are_checked_as_the_input_is():
    """onnxruntime's transformer optimizer writes SimplifiedLayerNormalization into the
    default domain: onnx's checker rejects the input, onnxruntime runs it."""
    g = GraphBuilder(opset=17)
    x = g.input([1, 4, 16])
    hidden = g.op(
        "MatMul", [g.op("Relu", [g.op("MatMul", [x, g.weight(16, 32)])]), g.weight(32, 16)]
    )
    g.nodes.append(
        helper.make_node(
            "SimplifiedLayerNormalization",
            [hidden, g.const(np.ones(16, np.float32))],
            ["normed"],
            axis=-1,
            epsilon=1e-5,
        )
    )
    g.output("normed")
    graph = helper.make_graph(
        g.nodes,
        "contrib",
        g.inputs,
        [helper.make_tensor_value_info("normed", TensorProto.FLOAT, [1, 4, 16])],
        g.initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    with pytest.raises(onnx.checker.ValidationError):
        onnx.checker.check_model(model)
    analysis, _, pruned = prune_and_check(model)
    assert [grp.channels for grp in analysis.prunable_groups] == [32]
    weights = sorted(list(t.dims) for t in pruned.graph.initializer if len(t.dims) == 2)
    assert weights == [[16, 16], [16, 16]]  # the 32-wide hidden layer lost half


def _skip_layer_norm(g: GraphBuilder, x: str, skip: str, width: int) -> list[str]:
    names = [f"sln_{i}" for i in range(4)]
    gamma, beta = g.const(np.linspace(0.5, 1.5, width, dtype=np.float32)), g.weight(width)
    g.nodes.append(
        helper.make_node(
            "SkipLayerNormalization",
            [x, skip, gamma, beta],
            names,
            domain="com.microsoft",
            epsilon=1e-5,
        )
    )
    return names


def test_skip_layer_norm_adds_exactly_and_normalizes_over_the_last_axis():
    """Channels on axis 1 of [N, C, L]: onnxruntime's fused residual + LayerNorm runs over
    L, so both addends lose the same channels and the sum (output 3) carries them too."""
    g = GraphBuilder(opset=17)
    x = g.input([1, 3, 6])
    out, _, _, total = _skip_layer_norm(g, g.conv(x, 3, 8, dims=1), g.conv(x, 3, 8, dims=1), 6)
    g.output(g.conv(g.op("Add", [out, g.op("Relu", [total])]), 8, 2, k=1, dims=1))
    analysis, _, _ = prune_and_check(g.model())
    assert [grp.channels for grp in analysis.prunable_groups] == [8]


def test_skip_layer_norm_over_the_hidden_size_is_a_barrier_unless_approximate():
    g = GraphBuilder(opset=17)
    x = g.input([1, 4, 16])
    hidden = g.op("MatMul", [x, g.weight(16, 12)])
    out = _skip_layer_norm(g, hidden, g.op("MatMul", [x, g.weight(16, 12)]), 12)[0]
    g.output(g.op("MatMul", [out, g.weight(12, 5)]))
    model = gp.load(g.model())
    assert "normalizes over the channel axis" in _reasons(gp.analyze(model))
    analysis = gp.analyze(model, approximate_norms=True)
    (group,) = analysis.prunable_groups
    assert group.channels == 12 and group.approximations
    pruned = gp.prune(analysis, gp.plan(analysis, 0.5))
    assert sorted(list(t.dims) for t in pruned.graph.initializer if len(t.dims) == 2) == [
        [6, 5],
        [16, 6],
        [16, 6],
    ]
    outputs(pruned, random_inputs(model, input_shapes(model), seed=0))  # onnxruntime runs it
