"""onnxruntime's fused (com.microsoft) ops and onnx's RotaryEmbedding: one tiny graph per
op against the oracle, and the real graphs onnxruntime's transformer optimizer writes
(tools/fused_models.py): heads and MLP widths prune on them as on the raw exports."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from fused_models import FUSED, cached_export, decoder
from fused_models import cached as fused_cached
from oracle import GraphBuilder, assert_same_outputs, outputs, prune_and_check

import graphprune as gp
from graphprune.core.metrics import count_macs
from graphprune.errors import GraphpruneError
from graphprune.runtime.inputs import input_shapes, random_inputs
from models.transformers_zoo import TRANSFORMERS, VOCAB
from models.transformers_zoo import cached as zoo_cached

MS = "com.microsoft"


class _Lowering:
    """Writes CPU nodes in place of one CUDA-only node; names start with the node's."""

    def __init__(self, model: onnx.ModelProto, node: onnx.NodeProto, nodes: list) -> None:
        self.model, self.node, self.nodes = model, node, nodes
        self.shapes = gp.GraphView(model).shapes

    def make(self, op, inputs, outputs=None, domain="", **attrs) -> str | list[str]:
        prefix = f"{self.node.name}/{len(self.nodes)}"
        outputs = outputs or [prefix]
        self.nodes.append(
            onnx.helper.make_node(op, inputs, outputs, prefix, domain=domain, **attrs)
        )
        return outputs[0] if len(outputs) == 1 else outputs

    def constant(self, values) -> str:
        name = f"{self.node.name}/c{len(self.model.graph.initializer)}"
        self.model.graph.initializer.append(onnx.numpy_helper.from_array(np.array(values), name))
        return name

    def unpack(self, packed: str, parts: int) -> list[str]:
        """[..., H, parts, D] -> parts tensors [..., H * D]."""
        axis = len(self.shapes[packed]) - 2
        names = [f"{self.node.name}/part{i}" for i in range(parts)]
        pieces = self.make("Split", [packed], names, axis=axis, num_outputs=parts)
        flat = self.constant([0] * (axis - 1) + [-1])
        squeezed = [self.make("Squeeze", [p, self.constant([axis])]) for p in pieces]
        return [self.make("Reshape", [p, flat]) for p in squeezed]

    def batch_of_one(self, op: str, tokens: list[str], rest: list[str], **attrs) -> None:
        """A token-major op ([T, ...] inputs `tokens`) run as batch 1 (one unpadded
        sequence); `rest` (weights, bias) follow unchanged."""
        batched = [self.make("Unsqueeze", [i, self.constant([0])]) for i in tokens]
        y = self.make(op, [*batched, *rest], domain=MS, **attrs)
        self.make("Squeeze", [y, self.constant([0])], [self.node.output[0]])


def cpu_equivalent(model: onnx.ModelProto) -> onnx.ModelProto:
    """The model with the CUDA-only fused ops written as the CPU ops their spec equates
    them with (for one unpadded sequence), so the oracle can run here: packed QKV / KV
    split into separate inputs, the packed (token-major) attentions as batch 1,
    BiasSplitGelu and BiasAdd decomposed. Applied to the masked original and to the
    pruned model alike; it reads the (rewritten) attributes and shapes of each node."""
    nodes: list[onnx.NodeProto] = []
    shapes = gp.GraphView(model).shapes
    for node in list(model.graph.node):
        ins, out = list(node.input), [node.output[0]]
        heads = {a.name: a.i for a in node.attribute if a.name == "num_heads"}
        low = _Lowering(model, node, nodes)
        if node.op_type == "MultiHeadAttention" and len(shapes[ins[0]]) == 5:
            low.make("MultiHeadAttention", low.unpack(ins[0], 3), out, MS, **heads)
        elif node.op_type == "MultiHeadAttention" and len(shapes[ins[1]]) == 5:
            low.make("MultiHeadAttention", [ins[0], *low.unpack(ins[1], 2)], out, MS, **heads)
        elif node.op_type == "PackedAttention":
            attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
            low.batch_of_one("Attention", ins[:1], ins[1:3], **attrs)
        elif node.op_type == "PackedMultiHeadAttention":
            qkv = low.unpack(ins[0], 3) if len(shapes[ins[0]]) == 4 else ins[:3]
            low.batch_of_one("MultiHeadAttention", qkv, [], **heads)
        elif node.op_type == "BiasSplitGelu":
            halves = [f"{node.name}/left", f"{node.name}/right"]
            left, right = low.make("Split", [low.make("Add", ins)], halves, axis=-1, num_outputs=2)
            low.make("Mul", [left, low.make("Gelu", [right], domain=MS)], out)
        elif node.op_type == "BiasAdd":
            low.make("Add", [low.make("Add", ins[:2]), ins[2]], out)
        else:
            nodes.append(node)
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    return model


def check_on_cpu(model: onnx.ModelProto, ratio: float):
    """prune_and_check's oracle, with CUDA-only fused ops run as their CPU equivalent."""
    model = gp.load(model)
    analysis = gp.analyze(model)
    plan = gp.plan(analysis, gp.PlanOptions(ratio=ratio))
    pruned = gp.prune(analysis, plan)
    feeds = random_inputs(model, input_shapes(model), seed=1)
    expected = outputs(cpu_equivalent(gp.mask(analysis, plan)), feeds)
    assert_same_outputs(
        expected,
        outputs(cpu_equivalent(onnx.ModelProto.FromString(pruned.SerializeToString())), feeds),
    )
    return analysis, plan, pruned


def attributes(model: onnx.ModelProto, op: str) -> dict:
    (node,) = [n for n in model.graph.node if n.op_type == op]
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def weight(model: onnx.ModelProto, name: str) -> np.ndarray:
    (tensor,) = [t for t in model.graph.initializer if t.name == name]
    return onnx.numpy_helper.to_array(tensor)


def prunable(analysis) -> list[tuple[str, int]]:
    return sorted((group.kind, group.channels) for group in analysis.prunable_groups)


def reasons(analysis) -> str:
    return " | ".join(str(r) for group in analysis.groups for r in group.reasons)


def gqa_graph(packed: bool, rotary: bool, cache: bool = False) -> tuple[onnx.ModelProto, str]:
    """x -> Q, K, V projections (or one packed) -> GroupQueryAttention (4 query heads, 2 KV
    heads of 16) -> output projection. Without a cache the sequence is the prompt: 6
    tokens, seqlens_k = 5, total_sequence_length = 6. Returns the model and the name of
    the query (or packed) projection weight."""
    g = GraphBuilder(seed=3)
    x = g.input([1, 6, 16])
    heads, kv_heads, size = 4, 2, 16
    if packed:
        w = g.weight(16, (heads + 2 * kv_heads) * size)
        qkv = [g.op("MatMul", [x, w]), "", ""]
    else:
        qkv = []
        for count in (heads, kv_heads, kv_heads):
            qkv.append(g.op("MatMul", [x, g.weight(16, count * size)]))
        w = g.nodes[-3].input[1]
    past = ["", ""]
    if cache:
        past = [g.input([1, kv_heads, 3, size], name) for name in ("past_key", "past_value")]
    total = 9 if cache else 6
    inputs = [
        *qkv,
        *past,
        g.const(np.array([total - 1], np.int32)),
        g.const(np.array(total, np.int32)),
    ]
    attrs = {}
    if rotary:
        angles = np.arange(16)[:, None] * np.arange(1, size // 2 + 1)[None] * 0.3
        inputs += [
            g.const(np.cos(angles).astype(np.float32)),
            g.const(np.sin(angles).astype(np.float32)),
        ]
        attrs["do_rotary"] = 1
    y = g.op(
        "GroupQueryAttention", inputs, outputs=3 if cache else 1, domain=MS,
        num_heads=heads, kv_num_heads=kv_heads, **attrs,
    )  # fmt: skip
    g.output(g.op("MatMul", [y[0] if cache else y, g.weight(heads * size, 5)]))
    return g.model(), w


@pytest.mark.parametrize("packed", [False, True], ids=["separate", "packed"])
@pytest.mark.parametrize("rotary", [False, True], ids=["plain", "rotary"])
def test_group_query_attention_removes_a_kv_head_with_its_query_heads(packed, rotary):
    model, w = gqa_graph(packed, rotary)
    analysis, plan, pruned = prune_and_check(model, 0.5)
    assert prunable(analysis) == [("heads", 2)]
    assert attributes(pruned, "GroupQueryAttention")["num_heads"] == 2
    assert attributes(pruned, "GroupQueryAttention")["kv_num_heads"] == 1
    (kept_kv,) = plan.choices[0].kept
    # The query columns that stay are those of the two query heads of the kept KV head.
    queries = weight(model, w)[:, : 4 * 16].reshape(16, 4, 16)[:, 2 * kept_kv : 2 * kept_kv + 2]
    np.testing.assert_array_equal(weight(pruned, w)[:, : 2 * 16], queries.reshape(16, 32))


def test_group_query_attention_slices_a_per_head_attention_bias():
    g = GraphBuilder(seed=11)
    x = g.input([1, 6, 16])
    qkv = g.op("MatMul", [x, g.weight(16, 8 * 8)])
    lengths = [g.const(np.array([5], np.int32)), g.const(np.array(6, np.int32))]
    bias = g.weight(1, 4, 6, 6)
    inputs = [qkv, "", "", "", "", *lengths, "", "", "", bias]
    y = g.op("GroupQueryAttention", inputs, domain=MS, num_heads=4, kv_num_heads=2)
    g.output(g.op("MatMul", [y, g.weight(32, 5)]))
    model = g.model()
    _, plan, pruned = prune_and_check(model, 0.5)
    (kept_kv,) = plan.choices[0].kept
    expected = weight(model, bias)[:, 2 * kept_kv : 2 * kept_kv + 2]
    np.testing.assert_array_equal(weight(pruned, bias), expected)


def test_group_query_attention_cache_in_the_graph_inputs_keeps_the_heads():
    model, _ = gqa_graph(packed=True, rotary=False, cache=True)
    analysis = gp.analyze(gp.load(model))
    assert prunable(analysis) == []
    assert "KV cache 'past_key' is a graph input: its heads go only with the cache" in reasons(
        analysis
    )  # unless --prune-kv-cache (tests/test_kv_cache.py)


def _cos_sin(g: GraphBuilder, rows: int, half: int) -> list[str]:
    angles = np.arange(rows)[:, None] * np.arange(1, half + 1)[None] * 0.3
    return [g.const(np.cos(angles).astype(np.float32)), g.const(np.sin(angles).astype(np.float32))]


@pytest.mark.parametrize("domain", [MS, ""], ids=["com.microsoft", "onnx23"])
@pytest.mark.parametrize("interleaved", [0, 1])
def test_rotary_embedding_removes_whole_heads(domain, interleaved):
    """3-D input [B, S, H*D] with num_heads: a head's positions rotate together, so heads
    go whole and num_heads counts those that stay (rotary_embedding_dim is per head)."""
    g = GraphBuilder(opset=23, seed=4)
    x = g.input([1, 6, 16])
    q, k, v = (g.op("MatMul", [x, g.weight(16, 3 * 8)]) for _ in range(3))
    cos, sin = _cos_sin(g, 6, 2)
    positions = g.const(np.arange(6, dtype=np.int64)[None])
    attrs = dict(num_heads=3, rotary_embedding_dim=4, interleaved=interleaved)
    if domain:
        q, k = (
            g.op("RotaryEmbedding", [t, positions, cos, sin], domain=MS, **attrs) for t in (q, k)
        )
    else:
        q, k = (g.op("RotaryEmbedding", [t, cos, sin, positions], **attrs) for t in (q, k))
    y = g.op("MultiHeadAttention", [q, k, v], domain=MS, num_heads=3)
    g.output(g.op("MatMul", [y, g.weight(24, 4)]))
    analysis, _, pruned = prune_and_check(g.model(), 0.34)
    assert prunable(analysis) == [("heads", 3)]
    assert {a["num_heads"] for a in _all_attributes(pruned, "RotaryEmbedding")} == {2}


def _all_attributes(model: onnx.ModelProto, op: str) -> list[dict]:
    return [
        {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        for node in model.graph.node
        if node.op_type == op
    ]


@pytest.mark.parametrize("packing", ["qkv", "kv"])
def test_multi_head_attention_packed_qkv_and_kv(packing):
    """Packed QKV [B, S, H, 3, D] (key, value absent) or packed KV [B, S, H, 2, D] (value
    absent): the reshape of the projection puts the heads on axis 2."""
    g = GraphBuilder(seed=5)
    x = g.input([1, 6, 16])
    parts = 3 if packing == "qkv" else 2
    packed = g.op("MatMul", [x, g.weight(16, 3 * parts * 8)])
    packed = g.op("Reshape", [packed, g.const(np.array([0, 0, 3, parts, 8]))])
    query = [] if packing == "qkv" else [g.op("MatMul", [x, g.weight(16, 24)])]
    inputs = [*query, packed]
    y = g.op("MultiHeadAttention", inputs, domain=MS, num_heads=3)
    g.output(g.op("MatMul", [y, g.weight(24, 4)]))
    analysis, _, pruned = check_on_cpu(g.model(), 0.34)
    assert prunable(analysis) == [("heads", 3)]
    assert attributes(pruned, "MultiHeadAttention")["num_heads"] == 2


def _tokens(g: GraphBuilder, count: int) -> list[str]:
    """token_offset and cumulative_sequence_length of one unpadded sequence."""
    return [
        g.const(np.arange(count, dtype=np.int32)[None]),
        g.const(np.array([0, count], np.int32)),
    ]


def test_packed_attention_removes_whole_heads():
    g = GraphBuilder(seed=6)
    x = g.input([6, 16])
    hidden = g.op("MatMul", [x, g.weight(16, 16)])
    y = g.op(
        "PackedAttention", [hidden, g.weight(16, 48), g.weight(48), *_tokens(g, 6)],
        domain=MS, num_heads=2,
    )  # fmt: skip
    g.output(g.op("MatMul", [y, g.weight(16, 4)]))
    analysis, _, pruned = check_on_cpu(g.model(), 0.5)
    assert prunable(analysis) == [("heads", 2), ("mlp", 16)]
    assert attributes(pruned, "PackedAttention")["num_heads"] == 1


@pytest.mark.parametrize("packing", ["separate", "qkv"])
def test_packed_multi_head_attention_removes_whole_heads(packing):
    """Token-major [T, H*D] query, key and value, or packed QKV [T, H, 3, D]."""
    g = GraphBuilder(seed=7)
    x = g.input([6, 16])
    if packing == "qkv":
        qkv = g.op("MatMul", [x, g.weight(16, 72)])
        inputs = [g.op("Reshape", [qkv, g.const(np.array([0, 3, 3, 8]))]), "", ""]
    else:
        inputs = [g.op("MatMul", [x, g.weight(16, 24)]) for _ in range(3)]
    y = g.op("PackedMultiHeadAttention", [*inputs, "", *_tokens(g, 6)], domain=MS, num_heads=3)
    g.output(g.op("MatMul", [y, g.weight(24, 4)]))
    analysis, _, pruned = check_on_cpu(g.model(), 0.34)
    assert prunable(analysis) == [("heads", 3)]
    assert attributes(pruned, "PackedMultiHeadAttention")["num_heads"] == 2


def test_bias_split_gelu_couples_the_halves_and_bias_add_the_skip():
    """BiasSplitGelu: output d = (x + b)[d] * gelu((x + b)[D/2 + d]); BiasAdd: x + b + skip."""
    g = GraphBuilder(seed=8)
    x = g.input([1, 6, 16])
    y = g.op("BiasSplitGelu", [g.op("MatMul", [x, g.weight(16, 32)]), g.weight(32)], domain=MS)
    skip = g.op("MatMul", [x, g.weight(16, 16)])
    y = g.op("BiasAdd", [g.op("MatMul", [y, g.weight(16, 16)]), g.weight(16), skip], domain=MS)
    g.output(g.op("MatMul", [y, g.weight(16, 4)]))
    analysis, _, pruned = check_on_cpu(g.model(), 0.5)
    assert prunable(analysis) == [("mlp", 16), ("mlp", 16)]
    assert [list(t.dims) for t in pruned.graph.initializer if len(t.dims) == 1] == [[16], [8]]


@pytest.mark.parametrize("trans_a,trans_b", [(0, 0), (0, 1), (1, 1)])
def test_fused_matmul_with_a_weight_and_between_activations(trans_a, trans_b):
    g = GraphBuilder(seed=9)
    x = g.input([1, 6, 16] if not trans_a else [1, 16, 6])
    w = g.weight(*((12, 16) if trans_b else (16, 12)))
    y = g.op("FusedMatMul", [x, w], domain=MS, transA=trans_a, transB=trans_b, alpha=0.5)
    if not trans_a:  # attention of y on itself: Q @ K^T contracts the channels (transB)
        scores = g.op("FusedMatMul", [y, y], domain=MS, transB=1, alpha=0.1)
        y = g.op("Add", [y, g.op("FusedMatMul", [g.op("Softmax", [scores]), y], domain=MS)])
    g.output(g.op("MatMul", [g.op("Relu", [y]), g.weight(12, 4)]))
    model = g.model()
    analysis, _, pruned = prune_and_check(model, 0.5)
    assert prunable(analysis) == [("mlp", 12)]
    assert weight(pruned, w).shape == ((6, 16) if trans_b else (16, 6))
    # 6 tokens x 12 features x 16 inputs, the output layer, and the two products of y
    attention = 0 if trans_a else 6 * 6 * 12 + 6 * 12 * 6
    assert count_macs(model, {}) == 6 * 12 * 16 + 6 * 4 * 12 + attention


@pytest.mark.parametrize("residual", ["tracked", "constant", None])
def test_fused_conv_activation_and_residual(residual):
    """FusedConv = Conv, + Z, then the activation: a tracked Z is coupled with the output
    channels, a constant one sliced."""
    g = GraphBuilder(seed=10)
    x = g.input([1, 3, 8, 8])
    a = g.conv(x, 3, 8)
    w, b = g.weight(8, 8, 3, 3), g.weight(8)
    z = {"tracked": [a], "constant": [g.weight(1, 8, 8, 8)], None: []}[residual]
    y = g.op(
        "FusedConv", [a, w, b, *z], domain=MS, activation="LeakyRelu",
        activation_params=[0.1], pads=[1, 1, 1, 1],
    )  # fmt: skip
    g.output(g.conv(y, 8, 2, k=1))
    model = g.model()
    analysis, _, pruned = prune_and_check(model, 0.5)
    assert prunable(analysis) == (
        [("channels", 8)] if residual == "tracked" else [("channels", 8)] * 2
    )
    assert weight(pruned, w).shape == (4, 4, 3, 3)
    assert count_macs(model, {}) == 64 * (8 * 3 * 9 + 8 * 8 * 9 + 2 * 8)  # FusedConv as Conv


FUSED_CASES = [name for name, entry in FUSED.items() if not entry.cache]  # cache: test_kv_cache


@pytest.mark.parametrize("name", FUSED_CASES)
def test_fused_graph_prunes_heads_and_mlp_like_the_raw_export(name):
    """onnxruntime.transformers.optimizer's graphs, the genai builder's LLaMA/Qwen2
    (GroupQueryAttention) and onnxruntime's session-optimized graphs (FusedMatMul): the
    same head and MLP groups as the raw exports (tests/test_transformers.py), against the
    oracle at two input shapes."""
    base = TRANSFORMERS[FUSED[name].base]
    model = gp.load(fused_cached(name))
    analysis = gp.analyze(model)
    assert prunable(analysis) == sorted([("heads", base.kv_heads), ("mlp", base.mlp)] * base.layers)
    plan = gp.plan(analysis, 0.3)
    pruned, masked = gp.prune(analysis, plan), gp.mask(analysis, plan)
    shapes = [(1, 3, 32, 32), (3, 3, 32, 32)] if not base.is_text else [(1, 8), (2, 5), (1, 13)]
    checked = 0
    for shape in shapes[: 1 if base.layers > 2 else None]:  # MiniLM: one shape suffices
        rng = np.random.default_rng(5)
        if FUSED[name].has_mask:
            feeds = {"input": rng.integers(0, VOCAB, shape), "mask": np.ones(shape, np.int64)}
            feeds["mask"][-1, -2:] = 0  # padding in the last sequence
        elif base.is_text:
            feeds = {"input": rng.integers(0, VOCAB, shape)}
        else:
            feeds = {"input": rng.standard_normal(shape).astype(np.float32)}
        try:
            original = outputs(model, feeds)
        except GraphpruneError:
            continue  # the dynamo exporter specialised this axis: the original cannot run it
        pruned_out = outputs(pruned, feeds)
        assert [o.shape for o in original] == [o.shape for o in pruned_out]
        assert_same_outputs(outputs(masked, feeds), pruned_out)
        checked += 1
    assert checked >= (1 if base.layers > 2 else 2)


def test_embed_layer_norm_hidden_size_prunes_as_the_raw_embeddings():
    """EmbedLayerNormalization normalizes the hidden size: a barrier by default, and with
    approximate norms the fused BERT loses the same hidden channels as the unfused export
    of the same model (tables, gamma, beta, Attention and SkipLayerNorm inputs) and
    computes the same."""
    fused = gp.load(fused_cached("bert"))
    (frozen,) = [g for g in gp.analyze(fused).groups if g.kind == "hidden"]
    assert not frozen.prunable and "EmbedLayerNormalization" in reasons_of(frozen)
    removed = list(range(0, 64, 4))
    pruned = []
    for model in (gp.load(cached_export("bert")), fused):
        analysis = gp.analyze(model, approximate_norms=True, prune_outputs=True)
        (group,) = [g for g in analysis.groups if g.kind == "hidden"]
        assert group.prunable and group.approximations
        chosen = {"name": group.name, "sources": group.sources, "channels": group.channels}
        plan = gp.plan_from_json(analysis, {"groups": [chosen | {"removed": removed}]})
        pruned.append(gp.prune(analysis, plan))
    feeds = {"input": np.arange(14).reshape(2, 7) % VOCAB, "mask": np.ones((2, 7), np.int64)}
    raw, fused_out = (outputs(model, feeds) for model in pruned)
    assert fused_out[0].shape == (2, 7, 48)
    assert_same_outputs(raw, fused_out)


def reasons_of(group) -> str:
    return " | ".join(str(r) for r in group.reasons)


@pytest.mark.parametrize("name", ["llama_gqa", "qwen2_gqa_packed"])
def test_genai_decoder_computes_the_transformers_model(name):
    """The builder-style graph is the transformers model: GroupQueryAttention pairs query
    head h with KV head h // (num_heads / kv_num_heads), as repeat_kv does."""
    import torch

    entry = FUSED[name]
    model = decoder(entry.base, entry.packed)
    ids = np.random.default_rng(0).integers(0, VOCAB, (2, 7))
    with torch.no_grad():
        expected = model(input_ids=torch.from_numpy(ids)).last_hidden_state.numpy()
    feeds = {"input": ids, "mask": np.ones((2, 7), np.int64)}
    assert_same_outputs([expected], outputs(gp.load(fused_cached(name)), feeds))


def test_genai_llama_hidden_size_prunes_as_the_raw_export():
    """With approximate norms the fused LLaMA (SimplifiedLayerNormalization, SkipSimplified-
    LayerNormalization, GroupQueryAttention) loses the same hidden channels as the raw
    dynamo export of the same model and computes the same."""
    removed = list(range(1, 64, 4))
    pruned = []
    for model in (gp.load(zoo_cached("llama", "dynamo")), gp.load(fused_cached("llama_gqa"))):
        analysis = gp.analyze(model, approximate_norms=True, prune_outputs=True)
        (group,) = [g for g in analysis.groups if g.kind == "hidden"]
        chosen = {"name": group.name, "sources": group.sources, "channels": group.channels}
        plan = gp.plan_from_json(analysis, {"groups": [chosen | {"removed": removed}]})
        pruned.append(gp.prune(analysis, plan))
    ids = np.random.default_rng(1).integers(0, VOCAB, (1, 8))
    raw = outputs(pruned[0], {"input": ids})
    fused = outputs(pruned[1], {"input": ids, "mask": np.ones((1, 8), np.int64)})
    assert fused[0].shape == (1, 8, 48)
    assert_same_outputs(raw, fused)


def test_fused_ops_count_the_macs_of_the_ops_they_fuse():
    """Attention (projection, Q.K^T, P.V), GroupQueryAttention and SkipLayerNorm-fed
    MatMuls cost what the unfused graphs of the same model cost."""
    pairs = [
        (cached_export("bert"), fused_cached("bert"), {"input": (2, 8), "mask": (2, 8)}),
        (zoo_cached("llama", "dynamo"), fused_cached("llama_gqa"), {"input": (1, 8)}),
    ]
    for raw, fused, shapes in pairs:
        expected = count_macs(gp.load(raw), shapes)
        assert count_macs(gp.load(fused), shapes | {"mask": shapes["input"]}) == expected > 0


def test_onnxruntime_gelu_passes_channels():
    g = GraphBuilder(seed=12)
    x = g.input([1, 6, 16])
    y = g.op("Gelu", [g.op("MatMul", [x, g.weight(16, 12)])], domain=MS)
    g.output(g.op("MatMul", [y, g.weight(12, 4)]))
    analysis, _, _ = prune_and_check(g.model(), 0.5)
    assert prunable(analysis) == [("mlp", 12)]
