"""One test per op rule: a tiny graph through the op, the groups it should produce (or the
barrier it should report), and the oracle on the pruned result."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from oracle import GraphBuilder, prune_and_check

import graphprune as gp
from graphprune.core.rules import RULES
from graphprune.core.rules.elementwise import BROADCAST, UNARY


def head(g: GraphBuilder, x: str, channels: int, spatial: tuple[int, ...] = (8, 8)) -> None:
    """Absorb channels in a final 1x1 conv, so the model output is not the channels."""
    g.output(g.conv(x, channels, 3, k=1, dims=len(spatial)))


def groups(analysis, prunable=True):
    return [grp for grp in analysis.groups if grp.prunable == prunable]


def reasons(analysis) -> str:
    return " | ".join(str(r) for grp in analysis.groups for r in grp.reasons)


def test_conv_plain_1d_2d_3d():
    for dims, spatial in ((1, (16,)), (2, (8, 8)), (3, (4, 4, 4))):
        g = GraphBuilder()
        x = g.input([1, 3, *spatial])
        y = g.op("Relu", [g.conv(x, 3, 8, dims=dims)])
        head(g, g.conv(y, 8, 6, dims=dims), 6, spatial)
        analysis, plan, _pruned = prune_and_check(g.model())
        assert [grp.channels for grp in groups(analysis)] == [8, 6]
        assert sum(len(c.removed) for c in plan.choices) == 4 + 3


def test_grouped_conv_removes_equally_per_group():
    g = GraphBuilder()
    x = g.input([1, 3, 8, 8])
    y = g.conv(x, 3, 8)
    y = g.conv(y, 8, 12, group=4)
    head(g, y, 12)
    _analysis, _plan, pruned = prune_and_check(g.model())
    weights = {i.name: i for i in pruned.graph.initializer}
    grouped = next(n for n in pruned.graph.node if n.op_type == "Conv" and n.attribute[0].i == 4)
    assert list(weights[grouped.input[1]].dims)[:2] == [8, 1]  # 12 -> 8 out, 2 -> 1 in/group


def test_depthwise_conv_passes_channels_through():
    for multiplier in (1, 2):
        g = GraphBuilder()
        x = g.input([1, 3, 8, 8])
        y = g.conv(x, 3, 8)
        y = g.conv(y, 8, 8 * multiplier, group=8)
        head(g, y, 8 * multiplier)
        analysis, _plan, pruned = prune_and_check(g.model())
        assert [grp.channels for grp in groups(analysis)] == [8]
        depthwise = [n for n in pruned.graph.node if n.op_type == "Conv"][1]
        assert gp.GraphView(pruned).attribute(depthwise, "group") == 4


def test_conv_transpose_plain_and_depthwise():
    g = GraphBuilder()
    x = g.input([1, 3, 8, 8])
    y = g.conv(x, 3, 8)
    y = g.op("ConvTranspose", [y, g.weight(8, 6, 2, 2), g.weight(6)], strides=[2, 2])
    y = g.op("ConvTranspose", [y, g.weight(6, 1, 3, 3)], group=6, pads=[1, 1, 1, 1])
    g.output(g.conv(y, 6, 2, k=1))
    analysis, _, _ = prune_and_check(g.model())
    assert [grp.channels for grp in groups(analysis)] == [8, 6]


@pytest.mark.parametrize("op", ["BatchNormalization", "InstanceNormalization"])
def test_per_channel_norms_slice_their_parameters(op):
    g = GraphBuilder()
    x = g.input([1, 3, 8, 8])
    y = g.conv(x, 3, 8)
    params = [g.weight(8), g.weight(8)]
    if op == "BatchNormalization":
        params += [
            g.weight(8),
            g.const(np.random.default_rng(0).random(8).astype(np.float32) + 0.5),
        ]
    head(g, g.op(op, [y, *params]), 8)
    analysis, _, _ = prune_and_check(g.model(), criterion="bn" if op[0] == "B" else "l1")
    assert [grp.channels for grp in groups(analysis)] == [8]


@pytest.mark.parametrize("opset,per_channel", [(21, True)])
def test_group_norm_removes_whole_norm_groups(opset, per_channel):
    g = GraphBuilder(opset=opset)
    x = g.input([1, 3, 8, 8])
    y = g.conv(x, 3, 8)
    size = 8 if per_channel else 4
    y = g.op("GroupNormalization", [y, g.weight(size), g.weight(size)], num_groups=4)
    head(g, y, 8)
    analysis, _plan, pruned = prune_and_check(g.model())
    assert [grp.channels for grp in groups(analysis)] == [4]  # 4 norm groups of 2
    norm = next(n for n in pruned.graph.node if n.op_type == "GroupNormalization")
    assert gp.GraphView(pruned).attribute(norm, "num_groups") == 2


def test_decomposed_group_norm_keeps_groups_removable():
    g = GraphBuilder()
    x = g.input([1, 3, 8, 8])
    y = g.conv(x, 3, 8)
    r = g.op("Reshape", [y, g.const(np.array([1, 4, -1]))])
    r = g.op("InstanceNormalization", [r, g.const(np.ones(4, np.float32)), g.weight(4)])
    r = g.op("Reshape", [r, g.const(np.array([1, 8, 8, 8]))])
    head(g, g.op("Mul", [r, g.weight(8, 1, 1)]), 8)
    analysis, _, _ = prune_and_check(g.model())
    assert [grp.channels for grp in groups(analysis)] == [4]


def test_layer_norm_over_channels_is_a_barrier_but_not_over_other_axes():
    g = GraphBuilder()
    x = g.input([1, 3, 8, 8])
    y = g.conv(x, 3, 8)
    t = g.op("Transpose", [y], perm=[0, 2, 3, 1])
    t = g.op("LayerNormalization", [t, g.weight(8), g.weight(8)], axis=-1)
    z = g.op("Transpose", [t], perm=[0, 3, 1, 2])
    w = g.op("LayerNormalization", [g.conv(z, 8, 6), g.weight(8), g.weight(8)], axis=-1)
    head(g, w, 6)
    analysis, _, _ = prune_and_check(g.model())
    assert [grp.channels for grp in groups(analysis)] == [6]
    assert "normalizes over the channel axis" in reasons(analysis)


def test_every_unary_and_broadcast_op_has_a_rule():
    for op in UNARY + BROADCAST:
        assert ("", op) in RULES


@pytest.mark.parametrize(
    "op,attrs",
    [("Relu", {}), ("Sigmoid", {}), ("Tanh", {}), ("HardSwish", {}), ("HardSigmoid", {}),
     ("LeakyRelu", {"alpha": 0.1}), ("Elu", {}), ("Selu", {}), ("Gelu", {}), ("Erf", {}),
     ("Softplus", {}), ("Mish", {}), ("Abs", {}), ("Neg", {}), ("Identity", {})],
)  # fmt: skip
def test_unary_ops_pass_channels(op, attrs):
    g = GraphBuilder(opset=20)
    x = g.input([1, 3, 8, 8])
    head(g, g.op(op, [g.conv(x, 3, 8)], **attrs), 8)
    analysis, _, _ = prune_and_check(g.model())
    assert [grp.channels for grp in groups(analysis)] == [8]


def test_cast_like_reads_only_the_type_of_its_second_input():
    """A scale cast like the channels it multiplies (unoptimized dynamo exports): the
    channels at CastLike's type input do not stop them."""
    g = GraphBuilder()
    x = g.input([1, 3, 8, 8])
    y = g.conv(x, 3, 8)
    scale = g.op("CastLike", [g.const(np.float32(0.5)), y])
    head(g, g.op("Mul", [y, scale]), 8)
    analysis, _, _ = prune_and_check(g.model())
    assert [grp.channels for grp in groups(analysis)] == [8]


def test_residual_add_couples_and_per_channel_constants_are_sliced():
    g = GraphBuilder()
    x = g.input([1, 3, 8, 8])
    a = g.conv(x, 3, 8)
    b = g.conv(g.op("Relu", [a]), 8, 8)
    s = g.op("Add", [a, b])
    s = g.op("Mul", [s, g.weight(8, 1, 1)])  # per-channel constant: sliced
    s = g.op("Add", [s, g.const(np.float32(0.5))])  # scalar: broadcast
    s = g.op("PRelu", [s, g.weight(8, 1, 1)])
    s = g.op("Where", [g.op("Greater", [s, g.const(np.float32(0))]), s, g.weight(8, 1, 1)])
    head(g, s, 8)
    analysis, _, _ = prune_and_check(g.model())
    assert len(groups(analysis)) == 1
    assert len(groups(analysis)[0].sources) == 2


def test_squeeze_excitation_couples_gate_with_features():
    g = GraphBuilder()
    x = g.input([1, 3, 8, 8])
    y = g.conv(x, 3, 8)
    s = g.op("GlobalAveragePool", [y])
    s = g.op("Sigmoid", [g.conv(g.op("Relu", [g.conv(s, 8, 4, k=1)]), 4, 8, k=1)])
    head(g, g.op("Mul", [y, s]), 8)
    analysis, _, _ = prune_and_check(g.model())
    assert sorted(grp.channels for grp in groups(analysis)) == [4, 8]


def test_runtime_per_channel_operand_is_a_barrier():
    g = GraphBuilder()
    x = g.input([1, 8, 8, 8])
    head(g, g.op("Add", [g.conv(x, 8, 8), x]), 8)
    analysis = gp.analyze(gp.load(g.model()))
    assert not groups(analysis)
    assert "computed from untracked channels" in reasons(analysis)


@pytest.mark.parametrize("op", ["MaxPool", "AveragePool", "LpPool"])
def test_pooling(op):
    g = GraphBuilder()
    x = g.input([1, 3, 8, 8])
    head(g, g.op(op, [g.conv(x, 3, 8)], kernel_shape=[2, 2], strides=[2, 2]), 8)
    analysis, _, _ = prune_and_check(g.model())
    assert len(groups(analysis)) == 1


@pytest.mark.parametrize("keepdims", [0, 1])
def test_reduce_over_space_keeps_channels_and_over_channels_stops_them(keepdims):
    g = GraphBuilder()
    x = g.input([1, 3, 8, 8])
    y = g.conv(x, 3, 8)
    pooled = g.op("ReduceMean", [y, g.const(np.array([2, 3]))], keepdims=keepdims)
    flat = pooled if not keepdims else g.op("Flatten", [pooled])
    g.output(g.op("Gemm", [flat, g.weight(4, 8), g.weight(4)], transB=1))
    z = g.conv(x, 3, 6)
    g.output(g.conv(g.op("ReduceMax", [z, g.const(np.array([1]))], keepdims=1), 1, 2, k=1))
    analysis, _, _ = prune_and_check(g.model())
    assert [grp.channels for grp in groups(analysis)] == [8]
    assert "reduces over the channel axis" in reasons(analysis)


def test_concat_maps_offsets_and_split_and_slice_rewrite_bounds():
    g = GraphBuilder()
    x = g.input([1, 3, 8, 8])
    a, b = g.conv(x, 3, 6), g.conv(x, 3, 4)
    c = g.op("Concat", [a, b, x], axis=1)  # 13 channels, the last 3 untracked
    s1, s2 = g.op("Split", [c, g.const(np.array([5, 8]))], outputs=2, axis=1)
    t = g.op("Slice", [c, g.const(np.array([2])), g.const(np.array([11])), g.const(np.array([1]))])
    head(g, s1, 5)
    head(g, s2, 8)
    head(g, t, 9)
    analysis, _plan, _pruned = prune_and_check(g.model())
    assert sorted(grp.channels for grp in groups(analysis)) == [4, 6]


def test_split_with_num_outputs_becomes_explicit():
    g = GraphBuilder(opset=18)
    x = g.input([1, 3, 8, 8])
    y = g.conv(x, 3, 8)
    a, b = g.op("Split", [y], outputs=2, axis=1, num_outputs=2)
    head(g, g.op("Concat", [b, g.conv(a, 4, 4)], axis=1), 8)
    _analysis, _plan, pruned = prune_and_check(g.model())
    split = next(n for n in pruned.graph.node if n.op_type == "Split")
    assert len(split.input) == 2 and not any(a.name == "num_outputs" for a in split.attribute)


def test_flatten_and_reshape_into_linear_layers():
    for flatten in ("Flatten", "Reshape"):
        g = GraphBuilder()
        x = g.input([1, 3, 4, 4])
        y = g.conv(x, 3, 8)
        if flatten == "Flatten":
            f = g.op("Flatten", [y], axis=1)
            out = g.op("Gemm", [f, g.weight(128, 10), g.weight(10)])
        else:
            f = g.op("Reshape", [y, g.const(np.array([1, 128]))])
            out = g.op("Add", [g.op("MatMul", [f, g.weight(128, 10)]), g.weight(10)])
        g.output(g.op("MatMul", [g.op("Relu", [out]), g.weight(10, 2)]))
        analysis, _, _pruned = prune_and_check(g.model())
        assert sorted(grp.channels for grp in groups(analysis)) == [8, 10]


def test_resize_with_scales_and_sizes_and_pad():
    g = GraphBuilder()
    x = g.input([1, 3, 8, 8])
    y = g.conv(x, 3, 8)
    up = g.op("Resize", [y, "", g.const(np.array([1, 1, 2, 2], np.float32))], mode="nearest")
    sized = g.op("Resize", [y, "", "", g.const(np.array([1, 8, 16, 16]))], mode="nearest")
    both = g.op("Add", [up, sized])
    padded = g.op("Pad", [both, g.const(np.array([0, 0, 1, 1, 0, 0, 1, 1]))])
    head(g, padded, 8)
    analysis, _, _ = prune_and_check(g.model())
    assert [grp.channels for grp in groups(analysis)] == [8]


def test_pad_on_channels_is_a_barrier():
    g = GraphBuilder()
    x = g.input([1, 3, 8, 8])
    padded = g.op("Pad", [g.conv(x, 3, 8), g.const(np.array([0, 1, 0, 0, 0, 1, 0, 0]))])
    head(g, padded, 10)
    assert "pads the channel axis" in reasons(gp.analyze(gp.load(g.model())))


def test_transpose_squeeze_unsqueeze_track_the_axis():
    g = GraphBuilder()
    x = g.input([1, 3, 8, 8])
    y = g.op("Transpose", [g.conv(x, 3, 8)], perm=[0, 2, 3, 1])  # channels last
    y = g.op("Unsqueeze", [y, g.const(np.array([0]))])  # [1, 1, 8, 8, 8]
    y = g.op("Squeeze", [y, g.const(np.array([0]))])
    y = g.op("MatMul", [y, g.weight(8, 5)])
    g.output(g.op("Transpose", [y], perm=[0, 3, 1, 2]))
    analysis, _, _ = prune_and_check(g.model())
    assert [grp.channels for grp in groups(analysis)] == [8]


@pytest.mark.parametrize("mode", ["DCR", "CRD"])
def test_depth_to_space_couples_blocks(mode):
    g = GraphBuilder()
    x = g.input([1, 3, 4, 4])
    y = g.op("DepthToSpace", [g.conv(x, 3, 16)], blocksize=2, mode=mode)
    head(g, y, 4)
    analysis, _, _ = prune_and_check(g.model())
    assert [grp.channels for grp in groups(analysis)] == [4]


def test_space_to_depth_repeats_channels():
    g = GraphBuilder()
    x = g.input([1, 3, 8, 8])
    head(g, g.op("SpaceToDepth", [g.conv(x, 3, 4)], blocksize=2), 16)
    analysis, _, _ = prune_and_check(g.model())
    assert [grp.channels for grp in groups(analysis)] == [4]


def test_channel_shuffle_is_mapped_exactly():
    g = GraphBuilder()
    x = g.input([1, 3, 4, 4])
    c = g.op("Concat", [g.conv(x, 3, 8), g.conv(x, 3, 8)], axis=1)
    r = g.op("Reshape", [c, g.const(np.array([1, 2, 8, 4, 4]))])
    t = g.op("Transpose", [r], perm=[0, 2, 1, 3, 4])
    s = g.op("Reshape", [t, g.const(np.array([1, 16, 4, 4]))])
    head(g, s, 16)
    analysis, _, _pruned = prune_and_check(g.model())
    assert [grp.channels for grp in groups(analysis)] == [8]  # the two branches couple


def test_shape_read_of_other_dims_is_harmless_and_of_channels_is_a_barrier():
    g = GraphBuilder()
    x = g.input(["N", 3, 4, 4])
    y = g.conv(x, 3, 8)
    batch = g.op("Gather", [g.op("Shape", [y]), g.const(np.array([0]))], axis=0)
    shape = g.op("Concat", [batch, g.const(np.array([-1]))], axis=0)
    g.output(g.op("Gemm", [g.op("Reshape", [y, shape]), g.weight(5, 128)], transB=1))
    z = g.conv(x, 3, 6)
    count = g.op("Cast", [g.op("Shape", [z])], to=1)
    g.output(
        g.op("Mul", [g.op("ReduceSum", [z, g.const(np.array([1]))]), g.op("ReduceSum", [count])])
    )
    analysis = gp.analyze(gp.load(g.model()))
    prunable = groups(analysis)
    assert [grp.channels for grp in prunable] == [8]
    assert "read at runtime" in reasons(analysis)


def test_op_without_rule_is_a_barrier_and_says_so():
    g = GraphBuilder()
    x = g.input([1, 3, 8, 8])
    g.output(g.op("Trilu", [g.conv(x, 3, 8)]))
    analysis = gp.analyze(gp.load(g.model()))
    assert not groups(analysis)
    assert "no channel rule for op Trilu" in reasons(analysis)


def test_model_outputs_keep_their_channels():
    g = GraphBuilder()
    x = g.input([1, 3, 8, 8])
    g.output(g.op("Relu", [g.conv(x, 3, 8)]))
    analysis = gp.analyze(gp.load(g.model()))
    assert "reaches model output" in reasons(analysis)


def test_weights_in_constant_and_identity_nodes_count_as_weights():
    g = GraphBuilder()
    x = g.input([1, 3, 8, 8])
    value = np.random.default_rng(0).standard_normal((8, 3, 3, 3)).astype(np.float32)
    w = g.op("Constant", [], value=__import__("onnx").numpy_helper.from_array(value))
    w = g.op("Identity", [w])
    y = g.op("Conv", [x, w], pads=[1, 1, 1, 1])
    head(g, y, 8)
    analysis, _, _pruned = prune_and_check(g.model())
    assert [grp.channels for grp in groups(analysis)] == [8]


@pytest.mark.parametrize(
    "op,with_bias", [("FastGelu", True), ("BiasGelu", True), ("QuickGelu", False)]
)
def test_onnxruntime_fused_activations_slice_their_bias(op, with_bias):
    g = GraphBuilder()
    x = g.input([1, 6, 8])
    y = g.op("MatMul", [x, g.weight(8, 16)])
    inputs = [y, g.weight(16)] if with_bias else [y]
    y = g.op(op, inputs, domain="com.microsoft")
    g.output(g.op("MatMul", [y, g.weight(16, 4)]))
    analysis, _, _ = prune_and_check(g.model())
    assert [grp.channels for grp in groups(analysis)] == [16]


def test_onnxruntime_fused_op_without_a_rule_declines_with_the_reason():
    g = GraphBuilder()
    x = g.input([1, 6, 16])
    hidden = g.op("MatMul", [x, g.weight(16, 16)])
    op = "DecoderMaskedMultiHeadAttention"  # the KV-cache decoding step: no rule yet
    mixed = g.op(op, [hidden, hidden, hidden], domain="com.microsoft", num_heads=2)
    g.output(g.op("MatMul", [mixed, g.weight(16, 4)]))
    analysis = gp.analyze(gp.load(g.model()))
    assert f"no channel rule for op com.microsoft.{op}" in reasons(analysis)
    assert analysis.ops_without_rule == {f"com.microsoft.{op}": 1}


@pytest.mark.parametrize("sizes", [None, [16, 16, 8]])
def test_onnxruntime_fused_attention_prunes_whole_heads(sizes):
    """com.microsoft.Attention: head h owns its columns of Q, K and V; num_heads and
    qkv_hidden_sizes count the heads that stay."""
    g = GraphBuilder()
    x = g.input([1, 6, 16])
    hidden = g.op("MatMul", [x, g.weight(16, 16)])
    width = sum(sizes) if sizes else 48
    extra = {"qkv_hidden_sizes": sizes} if sizes else {}
    mixed = g.op(
        "Attention",
        [hidden, g.weight(16, width), g.weight(width)],
        domain="com.microsoft",
        num_heads=4,
        **extra,
    )
    g.output(g.op("MatMul", [mixed, g.weight(sizes[2] if sizes else 16, 4)]))
    analysis, _, pruned = prune_and_check(g.model())
    assert sorted((grp.kind, grp.channels) for grp in groups(analysis)) == [
        ("heads", 4),
        ("mlp", 16),
    ]
    (node,) = [n for n in pruned.graph.node if n.op_type == "Attention"]
    attributes = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    assert attributes["num_heads"] == 2
    if sizes:
        assert attributes["qkv_hidden_sizes"] == [8, 8, 4]


@pytest.mark.parametrize("with_bias", [False, True])
def test_onnxruntime_multi_head_attention_prunes_whole_heads(with_bias):
    g = GraphBuilder()
    x = g.input([1, 6, 16])
    q, k, v = (g.op("MatMul", [x, g.weight(16, 12)]) for _ in range(3))
    inputs = [q, k, v] + ([g.weight(36)] if with_bias else [])
    mixed = g.op("MultiHeadAttention", inputs, domain="com.microsoft", num_heads=3)
    g.output(g.op("MatMul", [mixed, g.weight(12, 4)]))
    analysis, _, pruned = prune_and_check(g.model(), ratio=0.34)
    assert [(grp.kind, grp.channels) for grp in groups(analysis)] == [("heads", 3)]
    (node,) = [n for n in pruned.graph.node if n.op_type == "MultiHeadAttention"]
    assert onnx.helper.get_attribute_value(node.attribute[0]) == 2
