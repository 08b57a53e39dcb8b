"""Quantized graphs (core/rules/quantized.py): QDQ weights read through DequantizeLinear,
QOperator ops, 4-bit MatMulNBits (dynamic quantization: test_dynamic_quant.py). Every
rewrite is checked against the masking oracle, in which a removed position of a quantized
weight is its zero point."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from oracle import GraphBuilder, assert_same_outputs, outputs, prune_and_check

import graphprune as gp
from graphprune.core.metrics import count_macs
from graphprune.planning.plan import GroupChoice, Plan
from graphprune.runtime.inputs import input_shapes, random_inputs
from models.export import cached

quantization = pytest.importorskip("onnxruntime.quantization")


def _initializers(model: onnx.ModelProto) -> dict[str, onnx.TensorProto]:
    return {tensor.name: tensor for tensor in model.graph.initializer}


def _dq(g: GraphBuilder, q: np.ndarray, scale: np.ndarray, zero, **attrs) -> str:
    inputs = [g.const(q), g.const(scale)] + ([] if zero is None else [g.const(zero)])
    return g.op("DequantizeLinear", inputs, **attrs)


def _qdq_conv(g: GraphBuilder, x: str, cin: int, cout: int, scales=None) -> str:
    q = g.rng.integers(-127, 128, (cout, cin, 3, 3)).astype(np.int8)
    scale = scales if scales is not None else g.rng.uniform(0.001, 0.01, cout)
    weight = _dq(g, q, scale.astype(np.float32), np.zeros(cout, np.int8), axis=0)
    return g.op("Conv", [x, weight], pads=[1, 1, 1, 1])


def _static(model: onnx.ModelProto, tmp_path, fmt: str) -> onnx.ModelProto:
    """onnxruntime's static quantization (uint8 activations, int8 per-channel weights)."""
    src, dst = tmp_path / "float.onnx", tmp_path / f"{fmt}.onnx"
    onnx.save(model, src)
    feeds = [random_inputs(model, input_shapes(model), seed) for seed in (0, 1)]

    class Reader(quantization.CalibrationDataReader):
        def get_next(self):
            return feeds.pop() if feeds else None

    quantization.quantize_static(
        str(src), str(dst), Reader(), quant_format=getattr(quantization.QuantFormat, fmt),
        per_channel=True, activation_type=quantization.QuantType.QUInt8,
    )  # fmt: skip
    return onnx.load(dst)


def test_qdq_conv_slices_the_quantized_weight_and_its_per_channel_scale():
    g = GraphBuilder(opset=17)
    x = g.input([1, 3, 8, 8])
    y = g.op("Relu", [_qdq_conv(g, x, 3, 8)])
    g.output(_qdq_conv(g, y, 8, 4))
    analysis, _, pruned = prune_and_check(g.model(), ratio=0.5)
    assert [grp.channels for grp in analysis.prunable_groups] == [8]
    weights = sorted(
        (list(t.dims), t.data_type) for t in pruned.graph.initializer if len(t.dims) == 4
    )
    assert weights == [([4, 3, 3, 3], onnx.TensorProto.INT8), ([4, 4, 3, 3], onnx.TensorProto.INT8)]
    scales = sorted(list(t.dims) for t in pruned.graph.initializer if t.data_type == 1)
    assert scales == [[4], [4]]  # the first conv's scale lost 4; the second's is per output


def test_uint8_weights_mask_to_their_zero_point_and_an_omitted_one_is_zero():
    """Asymmetric uint8 weights (zero point 128 per channel: a removed input channel
    becomes 128 in the oracle, not 0) and a symmetric int8 weight without zero point."""
    g = GraphBuilder(opset=17)
    x = g.input([1, 3, 8, 8])
    first = _dq(g, g.rng.integers(0, 256, (8, 3, 3, 3)).astype(np.uint8),
                np.full(8, 0.01, np.float32), np.full(8, 128, np.uint8), axis=0)  # fmt: skip
    y = g.op("Relu", [g.op("Conv", [x, first], pads=[1, 1, 1, 1])])
    second = _dq(g, g.rng.integers(0, 256, (4, 8, 3, 3)).astype(np.uint8),
                 g.rng.uniform(0.01, 0.02, 4).astype(np.float32),
                 g.rng.integers(120, 136, 4).astype(np.uint8), axis=0)  # fmt: skip
    z = g.op("Relu", [g.op("Conv", [y, second], pads=[1, 1, 1, 1])])
    third = _dq(g, g.rng.integers(-127, 128, (2, 4, 1, 1)).astype(np.int8),
                np.float32(0.02), None)  # fmt: skip
    g.output(g.op("Conv", [z, third]))
    analysis, _, _ = prune_and_check(g.model(), ratio=0.5)
    assert [grp.channels for grp in analysis.prunable_groups] == [8, 4]


def test_importance_ranks_quantized_channels_by_their_real_values():
    """Equal integers, scales 1 and 0.01: the small-scale channels are the weak ones."""
    g = GraphBuilder(opset=17)
    x = g.input([1, 3, 8, 8])
    scales = np.array([1, 0.01, 1, 0.01, 1, 0.01], np.float32)
    q = np.full((6, 3, 3, 3), 50, np.int8)
    y = g.op("Conv", [x, _dq(g, q, scales, np.zeros(6, np.int8), axis=0)], pads=[1, 1, 1, 1])
    g.output(_qdq_conv(g, g.op("Relu", [y]), 6, 2))
    _, plan, _ = prune_and_check(g.model(), ratio=0.5, criterion="l1")
    assert sorted(plan.choices[0].removed) == [1, 3, 5]


def test_blocked_dequantize_removes_whole_blocks():
    """opset 21 blocked quantization along K: a block's features share a scale."""
    g = GraphBuilder(opset=21)
    x = g.input([1, 4, 8])
    h = g.op("Relu", [g.op("MatMul", [x, g.weight(8, 16)])])
    q = g.rng.integers(0, 256, (16, 6)).astype(np.uint8)
    scale = g.rng.uniform(0.01, 0.02, (4, 6)).astype(np.float32)
    zero = g.rng.integers(100, 150, (4, 6)).astype(np.uint8)
    g.output(g.op("MatMul", [h, _dq(g, q, scale, zero, axis=0, block_size=4)]))
    analysis, _, pruned = prune_and_check(g.model(), ratio=0.5)
    group = analysis.prunable_groups[0]
    assert group.channels == 4  # four blocks of four features
    stored = {tuple(t.dims) for t in pruned.graph.initializer}
    assert {(8, 8), (8, 6), (2, 6)} <= stored


def test_qoperator_ops_prune_exactly(tmp_path):
    """QLinearConv, QLinearAdd, QLinearGlobalAveragePool, QGemm from onnxruntime's quantizer."""
    g = GraphBuilder(opset=17)
    x = g.input([1, 3, 8, 8])
    a = g.op("Relu", [g.conv(x, 3, 8)])
    b = g.op("Relu", [g.conv(a, 8, 8)])
    pooled = g.op("GlobalAveragePool", [g.op("Add", [a, b])])
    flat = g.op("Flatten", [g.conv(pooled, 8, 6, k=1)])
    g.output(g.op("Gemm", [flat, g.weight(5, 6), g.weight(5)], transB=1))
    model = _static(g.model(), tmp_path, "QOperator")
    ops = {node.op_type for node in model.graph.node}
    assert {"QLinearConv", "QLinearAdd", "QLinearGlobalAveragePool"} <= ops
    analysis, _, pruned = prune_and_check(model, ratio=0.5)
    assert sorted(grp.channels for grp in analysis.prunable_groups) == [6, 8]
    assert {node.op_type for node in pruned.graph.node} == ops  # still quantized
    conv = next(n for n in pruned.graph.node if n.op_type == "QLinearConv")
    weight = _initializers(pruned)[conv.input[3]]
    assert weight.data_type in (onnx.TensorProto.INT8, onnx.TensorProto.UINT8)


def test_qlinear_concat_and_average_pool(tmp_path):
    g = GraphBuilder(opset=17)
    x = g.input([1, 3, 16, 16])
    a = g.op("Relu", [g.conv(x, 3, 8)])
    b = g.op("Relu", [g.conv(a, 8, 6)])
    joined = g.op("Concat", [a, b], axis=1)
    pooled = g.op("AveragePool", [joined], kernel_shape=[2, 2], strides=[2, 2])
    g.output(g.conv(pooled, 14, 4))
    model = _static(g.model(), tmp_path, "QOperator")
    ops = {node.op_type for node in model.graph.node}
    assert {"QLinearConcat", "QLinearAveragePool"} <= ops
    analysis, _, _ = prune_and_check(model, ratio=0.5)
    assert sorted(grp.channels for grp in analysis.prunable_groups) == [6, 8]


def test_oracle_catches_a_wrong_slice_of_a_quantized_weight(tmp_path):
    """Shift the removed channels by one in the rewrite only: the masked original (zero
    points in the removed positions) and the pruned model must disagree."""
    g = GraphBuilder(opset=17)
    x = g.input([1, 3, 8, 8])
    y = g.op("Relu", [g.conv(g.op("Relu", [g.conv(x, 3, 8)]), 8, 8)])
    g.output(g.conv(y, 8, 4))
    model = gp.load(_static(g.model(), tmp_path, "QDQ"))
    analysis = gp.analyze(model)
    plan = gp.plan(analysis, 0.5)
    feeds = random_inputs(model, input_shapes(model), seed=3)
    masked = outputs(gp.mask(analysis, plan), feeds)
    assert_same_outputs(masked, outputs(gp.prune(analysis, plan), feeds))
    choice = plan.choices[0]
    channels = analysis.groups[choice.group].channels
    shifted = sorted({(i + 1) % channels for i in choice.removed})
    wrong = [GroupChoice(choice.group, shifted, []), *plan.choices[1:]]
    classes = np.concatenate([analysis.groups[c.group].classes[c.removed] for c in wrong])
    pruned = outputs(gp.prune(analysis, Plan(wrong, np.sort(classes))), feeds)
    with pytest.raises(AssertionError):
        assert_same_outputs(masked, pruned)


def _mlp(opset: int = 17) -> onnx.ModelProto:
    g = GraphBuilder(opset=opset)
    x = g.input([1, 4, 64])
    h = g.op("Relu", [g.op("MatMul", [x, g.weight(64, 128)])])
    g.output(g.op("MatMul", [h, g.weight(128, 64)]))
    return g.model()


@pytest.mark.parametrize("symmetric", [True, False])
def test_matmul_nbits_prunes_rows_and_whole_blocks(symmetric):
    from onnxruntime.quantization import matmul_nbits_quantizer as nbits

    config = nbits.DefaultWeightOnlyQuantConfig(block_size=32, is_symmetric=symmetric)
    quantizer = nbits.MatMulNBitsQuantizer(_mlp(), algo_config=config)
    quantizer.process()
    analysis, _, pruned = prune_and_check(quantizer.model.model, ratio=0.5)
    assert [grp.channels for grp in analysis.prunable_groups] == [4]  # 128 = 4 blocks
    view = gp.GraphView(pruned)
    first, second = (n for n in pruned.graph.node if n.op_type == "MatMulNBits")
    assert (view.attribute(first, "N"), view.attribute(second, "K")) == (64, 64)
    stored = _initializers(pruned)
    assert list(stored[first.input[1]].dims) == [64, 2, 16]
    assert list(stored[second.input[1]].dims) == [64, 2, 16]
    if not symmetric:  # 4-bit zero points, two blocks per byte, repacked
        assert list(stored[second.input[3]].dims) == [64, 1]


@pytest.mark.parametrize(
    "name,exporter,fmt", [("resnet18", "classic", "QOperator"), ("mobilenetv2", "dynamo", "QDQ")]
)
def test_real_quantized_exports_prune_exactly(name, exporter, fmt, tmp_path):
    model = _static(onnx.load(cached(name, exporter)), tmp_path, fmt)
    analysis, _, pruned = prune_and_check(model, ratio=0.3)
    assert len(analysis.prunable_groups) >= len(analysis.groups) - 1  # all but the logits
    kinds = {(n.domain, n.op_type) for n in model.graph.node}
    assert {(n.domain, n.op_type) for n in pruned.graph.node} == kinds
    params = [sum(int(np.prod(t.dims)) for t in m.graph.initializer) for m in (model, pruned)]
    assert params[1] < 0.7 * params[0]


def test_a_dequantized_weight_read_twice_is_sliced_per_reader():
    """One DequantizeLinear feeding two MatMuls (a tied weight): loading gives each its
    own, so each reader's channels slice their own copy."""
    g = GraphBuilder(opset=17)
    x = g.input([1, 4, 16])
    q = g.rng.integers(-127, 128, (16, 16)).astype(np.int8)
    tied = _dq(g, q, np.full(16, 0.02, np.float32), np.zeros(16, np.int8), axis=1)
    first = g.op("Relu", [g.op("MatMul", [x, tied])])
    second = g.op("Relu", [g.op("MatMul", [g.op("Neg", [x]), tied])])
    g.output(g.op("MatMul", [g.op("Concat", [first, second], axis=-1), g.weight(32, 8)]))
    analysis, _, pruned = prune_and_check(g.model(), ratio=0.5)
    assert sorted(grp.channels for grp in analysis.prunable_groups) == [16, 16]
    assert sum(n.op_type == "DequantizeLinear" for n in pruned.graph.node) == 2


def test_budgets_count_quantized_layers(tmp_path):
    """--target-macs on a QDQ and a QOperator model: the cost model finds the weights'
    edits behind DequantizeLinear and in QLinearConv, so it stops near the target."""
    g = GraphBuilder(opset=17)
    x = g.input([1, 3, 16, 16])
    y = g.op("Relu", [g.conv(g.op("Relu", [g.conv(x, 3, 16)]), 16, 16)])
    g.output(g.conv(y, 16, 4))
    for fmt in ("QDQ", "QOperator"):
        model = gp.load(_static(g.model(), tmp_path, fmt))
        shapes = input_shapes(model)
        analysis = gp.analyze(model)
        plan = gp.plan(analysis, gp.PlanOptions(budget=gp.Budget("macs", 0.5)))
        before = count_macs(model, shapes)
        after = count_macs(gp.prune(analysis, plan), shapes)
        assert before > 0 and 0.4 < after / before <= 0.55, (fmt, after / before)


@pytest.mark.parametrize("fmt", ["QDQ", "nbits"])
def test_quantized_llama_keeps_its_heads_and_mlp(fmt, tmp_path):
    """LLaMA (grouped-query attention, rotary) from a config, dynamo export: QDQ prunes
    and MatMulNBits prune heads and MLP widths exactly, as the float model does."""
    from models.torchvision_cpu import import_torchvision

    import_torchvision()
    from models.transformers_zoo import cached as transformer

    model = onnx.load(transformer("llama", "dynamo"))
    if fmt == "QDQ":
        model = _static(model, tmp_path, "QDQ")
    else:
        from onnxruntime.quantization import matmul_nbits_quantizer as nbits

        config = nbits.DefaultWeightOnlyQuantConfig(block_size=32, is_symmetric=False)
        quantizer = nbits.MatMulNBitsQuantizer(model, algo_config=config)
        quantizer.process()
        model = quantizer.model.model
    analysis, _, _ = prune_and_check(model, ratio=0.3)
    assert sorted(grp.kind for grp in analysis.prunable_groups) == ["heads"] * 2 + ["mlp"] * 2


def test_a_deduplicated_quantized_bias_read_through_identity_nodes():
    """The classic exporter stores equal biases once and reads them through Identity
    nodes; the quantizer then dequantizes that one bias for both convs."""
    g = GraphBuilder(opset=17)
    x = g.input([1, 3, 8, 8])
    bias = _dq(g, np.arange(8, dtype=np.int32), np.float32(0.01), None)
    first = g.op("Conv", [x, _dq(g, g.rng.integers(-127, 128, (8, 3, 3, 3)).astype(np.int8),
                                 np.full(8, 0.01, np.float32), None, axis=0),
                          g.op("Identity", [bias])], pads=[1, 1, 1, 1])  # fmt: skip
    second = g.op("Conv", [g.op("Relu", [first]),
                           _dq(g, g.rng.integers(-127, 128, (8, 8, 1, 1)).astype(np.int8),
                               np.full(8, 0.01, np.float32), None, axis=0),
                           g.op("Identity", [bias])])  # fmt: skip
    g.output(g.conv(g.op("Relu", [second]), 8, 2))
    analysis, _, pruned = prune_and_check(g.model(), ratio=0.5)
    assert [grp.channels for grp in analysis.prunable_groups] == [8, 8]
    biases = sorted(tuple(t.dims) for t in pruned.graph.initializer if t.data_type == 6)
    assert biases == [(4,), (4,)]  # one int32 bias per conv, each sliced with its channels
