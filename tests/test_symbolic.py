"""Symbolic dims: heads folded into a symbolic batch (a tiled layout) and channel counts
read at runtime (Shape), checked by the oracle at several batch sizes."""

from __future__ import annotations

import numpy as np
import onnx
from oracle import GraphBuilder, assert_same_outputs, outputs

import graphprune as gp

SEQ, HEADS, DIM = 5, 4, 3
WIDTH = HEADS * DIM


def _dim(g: GraphBuilder, x: str, axis: int) -> str:
    """Entry `axis` of Shape(x) as a scalar, as exporters read a symbolic batch."""
    return g.op("Gather", [g.op("Shape", [x]), g.const(np.array(axis))], axis=0)


def _vector(g: GraphBuilder, *pieces) -> str:
    parts = [
        g.const(np.array([p])) if isinstance(p, int) else g.op("Unsqueeze", [p, g.const([0])])
        for p in pieces
    ]
    return g.op("Concat", parts, axis=0)


def _folded_heads(g: GraphBuilder, x: str) -> str:
    """torch's nn.MultiheadAttention as the classic exporter writes it: [S, B, H*D] is
    reshaped to [S, B*H, D], attention runs over the batch*heads axis, then back."""
    batch = _dim(g, x, 1)
    per_head = [
        g.op(
            "Transpose",
            [
                g.op(
                    "Reshape",
                    [
                        g.op("MatMul", [x, g.weight(WIDTH, WIDTH)]),
                        _vector(g, SEQ, g.op("Mul", [batch, g.const(np.array(HEADS))]), DIM),
                    ],
                )
            ],
            perm=[1, 0, 2],
        )
        for _ in range(3)
    ]
    q, k, v = per_head
    scores = g.op("MatMul", [q, g.op("Transpose", [k], perm=[0, 2, 1])])
    mixed = g.op("MatMul", [g.op("Softmax", [scores], axis=-1), v])  # [B*H, S, D]
    merged = g.op(
        "Reshape", [g.op("Transpose", [mixed], perm=[1, 0, 2]), _vector(g, SEQ, batch, WIDTH)]
    )
    return g.op("MatMul", [merged, g.weight(WIDTH, WIDTH)])


def _check(model, analysis, plan, batches=(1, 3)) -> onnx.ModelProto:
    """The oracle at each batch size (the input's symbolic dim); returns the pruned model."""
    pruned, masked = gp.prune(analysis, plan), gp.mask(analysis, plan)
    (x,) = model.graph.input
    rng = np.random.default_rng(0)
    for batch in batches:
        shape = [d.dim_value or batch for d in x.type.tensor_type.shape.dim]
        feeds = {x.name: rng.standard_normal(shape).astype(np.float32)}
        assert_same_outputs(outputs(masked, feeds), outputs(pruned, feeds))
    return pruned


def test_heads_folded_into_a_symbolic_batch_prune_exactly():
    g = GraphBuilder()
    x = g.input([SEQ, "batch", WIDTH])
    g.output(g.op("Add", [_folded_heads(g, x), x]))
    model = gp.load(g.model())
    analysis = gp.analyze(model)
    (group,) = analysis.prunable_groups
    assert (group.kind, group.channels) == ("heads", HEADS)
    pruned = _check(model, analysis, gp.plan(analysis, 0.5))
    assert sum(t.dims[1] == WIDTH // 2 for t in pruned.graph.initializer if len(t.dims) == 2) == 3


def test_a_runtime_channel_count_feeds_the_reshape_that_needs_it():
    """[B, S, H*D] -> [B, S, H, D] -> [B*H, S, D] (target [-1, S, D]) and back to
    [B, H, S, D] with the target Concat(Shape(x)[0:2], [S, D]): the head count is read
    at runtime, so it follows the pruned heads without a rewrite."""
    g = GraphBuilder()
    x = g.input(["batch", SEQ, WIDTH])
    heads = g.op(
        "Transpose",
        [
            g.op(
                "Reshape",
                [
                    g.op("MatMul", [x, g.weight(WIDTH, WIDTH)]),
                    g.const(np.array([0, SEQ, HEADS, DIM])),
                ],
            )
        ],
        perm=[0, 2, 1, 3],
    )
    leading = g.op("Slice", [g.op("Shape", [heads]), g.const([0]), g.const([2])])
    flat = g.op("Reshape", [heads, g.const(np.array([-1, SEQ, DIM]))])
    back = g.op(
        "Reshape",
        [g.op("Relu", [flat]), g.op("Concat", [leading, g.const(np.array([SEQ, DIM]))], axis=0)],
    )
    scores = g.op("MatMul", [back, g.op("Transpose", [back], perm=[0, 1, 3, 2])])
    mixed = g.op("MatMul", [scores, back])
    merged = g.op(
        "Reshape",
        [g.op("Transpose", [mixed], perm=[0, 2, 1, 3]), g.const(np.array([0, SEQ, WIDTH]))],
    )
    g.output(g.op("MatMul", [merged, g.weight(WIDTH, 5)]))
    model = gp.load(g.model())
    analysis = gp.analyze(model)
    assert [(grp.kind, grp.channels) for grp in analysis.prunable_groups] == [("heads", HEADS)]
    _check(model, analysis, gp.plan(analysis, 0.5), batches=(1, 2))


def test_a_runtime_channel_count_used_as_a_number_is_a_barrier():
    """The element count per sample, Shape(y)[1:] multiplied out, includes the channels."""
    g = GraphBuilder()
    x = g.input(["batch", "seq", WIDTH])
    y = g.op("MatMul", [x, g.weight(WIDTH, WIDTH)])
    sizes = g.op("Slice", [g.op("Shape", [y]), g.const([1]), g.const([3])])
    count = g.op("Cast", [g.op("ReduceProd", [sizes], keepdims=0)], to=1)
    g.output(g.op("MatMul", [g.op("Div", [y, count]), g.weight(WIDTH, 5)]))
    analysis = gp.analyze(gp.load(g.model()))
    assert not analysis.prunable_groups
    assert "ReduceProd" in _reasons(analysis) and "read at runtime (Shape)" in _reasons(analysis)


def test_a_tiled_layout_stops_at_ops_that_do_not_take_it():
    """A sum over the batch*heads axis mixes heads with samples: a barrier."""
    g = GraphBuilder()
    x = g.input([SEQ, "batch", WIDTH])
    batch = _dim(g, x, 1)
    folded = g.op(
        "Reshape",
        [
            g.op("MatMul", [x, g.weight(WIDTH, WIDTH)]),
            _vector(g, SEQ, g.op("Mul", [batch, g.const(np.array(HEADS))]), DIM),
        ],
    )
    scores = g.op(
        "MatMul",
        [g.op("Transpose", [folded], perm=[1, 0, 2]), g.op("Transpose", [folded], perm=[1, 2, 0])],
    )
    g.output(g.op("ReduceSum", [scores, g.const([0])], keepdims=0))
    analysis = gp.analyze(gp.load(g.model()))
    assert not analysis.prunable_groups
    assert "ReduceSum" in _reasons(analysis)
    assert "share an axis with a symbolic dim" in _reasons(analysis)


def _reasons(analysis) -> str:
    return " ".join(str(r) for grp in analysis.groups for r in grp.reasons)


def test_packed_qkv_selected_along_its_own_axis_prunes_whole_heads():
    """timm's ViT as the dynamo exporter writes it: [B, S, 3*H*D] -> [B, S, 3, H, D] ->
    [3, B, H, S, D], then Q, K and V sliced off axis 0 and squeezed. The 3-axis is selected
    along, so it is no head axis: the heads are."""
    g = GraphBuilder()
    x = g.input(["batch", SEQ, WIDTH])
    packed = g.op(
        "Reshape",
        [
            g.op("MatMul", [x, g.weight(WIDTH, 3 * WIDTH)]),
            g.const(np.array([0, SEQ, 3, HEADS, DIM])),
        ],
    )
    moved = g.op("Transpose", [packed], perm=[2, 0, 3, 1, 4])
    q, k, v = (
        g.op(
            "Squeeze",
            [g.op("Slice", [moved, g.const([i]), g.const([i + 1]), g.const([0])]), g.const([0])],
        )
        for i in range(3)
    )
    scores = g.op(
        "Softmax", [g.op("MatMul", [q, g.op("Transpose", [k], perm=[0, 1, 3, 2])])], axis=-1
    )
    mixed = g.op("Transpose", [g.op("MatMul", [scores, v])], perm=[0, 2, 1, 3])
    merged = g.op("Reshape", [mixed, g.const(np.array([0, SEQ, WIDTH]))])
    g.output(g.op("MatMul", [merged, g.weight(WIDTH, 5)]))
    model = gp.load(g.model())
    analysis = gp.analyze(model)
    assert [(grp.kind, grp.channels) for grp in analysis.prunable_groups] == [("heads", HEADS)]
    _check(model, analysis, gp.plan(analysis, 0.5), batches=(1, 2))
