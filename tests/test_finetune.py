"""Recovery (`graphprune finetune`, `prune/sweep --recover`): the lowering onto torch
against onnxruntime (op by op and on real exports), and distillation's contract: the loss
falls, only weight values change (in their own types: QDQ codes, float16), the same run
gives the same bytes, a resumed run ends where the uninterrupted one does, and bad input
is refused in one line with nothing written."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from oracle import GraphBuilder, assert_same_outputs, outputs

import graphprune as gp
from graphprune.cli import main
from graphprune.errors import GraphpruneError
from graphprune.runtime.inputs import input_shapes, random_inputs

torch = pytest.importorskip("torch")
from graphprune.recovery.data import TrainingData  # noqa: E402
from graphprune.recovery.distill import finetune  # noqa: E402
from graphprune.recovery.lowering import LoweredModel, feeds_to_torch  # noqa: E402
from graphprune.recovery.options import FinetuneOptions  # noqa: E402
from graphprune.recovery.teacher import feature_points  # noqa: E402

EXAMPLE = Path(__file__).parent.parent / "models" / "example" / "resnet_tiny.onnx"
FAST = {"threads": 1, "batch": 8, "lr": 1e-3}


def lowered_outputs(model: onnx.ModelProto, feeds: dict) -> list[np.ndarray]:
    names = [o.name for o in model.graph.output]
    with torch.no_grad():
        got = LoweredModel(model)(feeds_to_torch(feeds, torch.device("cpu")), names)
    return [g.numpy() for g in got]


def assert_lowering_matches(model: onnx.ModelProto, feeds: dict, rtol: float = 1e-4) -> None:
    expected = outputs(model, feeds)
    actual = lowered_outputs(model, feeds)
    assert_same_outputs(expected, [a.astype(e.dtype) for e, a in zip(expected, actual,
                                                                      strict=True)], rtol)


# One op at a time: the attributes where ONNX and torch disagree (pads, ceil mode,
# coordinate modes, negative steps, gate orders, opset changes).

def _single(op: str, shape, *consts, opset=18, domain="", outputs=1, **attrs):
    g = GraphBuilder(opset=opset)
    x = g.input(list(shape))
    inputs = [x] + [g.const(c) if c is not None else "" for c in consts]
    names = g.op(op, inputs, outputs=outputs, domain=domain, **attrs)
    for name in [names] if outputs == 1 else names:
        g.output(name)
    return g.model()


def _lstm(direction: str, kind: str = "LSTM", **attrs):
    rng = np.random.default_rng(0)
    dirs = 2 if direction == "bidirectional" else 1
    hidden, gates = 5, {"LSTM": 4, "GRU": 3}[kind]
    w = rng.standard_normal((dirs, gates * hidden, 3)).astype(np.float32) * 0.5
    r = rng.standard_normal((dirs, gates * hidden, hidden)).astype(np.float32) * 0.5
    b = rng.standard_normal((dirs, 2 * gates * hidden)).astype(np.float32) * 0.1
    g = GraphBuilder(opset=14)
    x = g.input([4, 2, 3])
    y = g.op(kind, [x, g.const(w), g.const(r), g.const(b)], outputs=2, hidden_size=hidden,
             direction=direction, **attrs)  # fmt: skip
    g.output(y[0])
    g.output(y[1])
    return g.model()


def _topk():
    """TopK's indices are int64: cast to float so the builder's float outputs check them."""
    g = GraphBuilder(opset=18)
    values, indices = g.op("TopK", [g.input([3, 6]), g.const(np.array([2], np.int64))],
                           outputs=2, axis=1, largest=0)  # fmt: skip
    g.output(values)
    g.output(g.op("Cast", [indices], to=TensorProto.FLOAT))
    return g.model()


I64 = np.int64
# fmt: off
CASES = {
    "conv-asymmetric-pads": lambda: _single("Conv", (1, 2, 7, 6), np.ones((3, 2, 3, 3), np.float32),
                                            pads=[0, 1, 2, 1], strides=[2, 1]),
    "conv-same-lower-grouped": lambda: _single("Conv", (1, 2, 7, 6), np.ones((4, 1, 3, 2),
                                               np.float32), auto_pad="SAME_LOWER", group=2,
                                               strides=[2, 2]),
    "conv-dilated": lambda: _single("Conv", (1, 2, 7, 6), np.ones((2, 2, 3, 2), np.float32),
                                    dilations=[2, 1], pads=[1, 0, 2, 1]),
    "conv-transpose": lambda: _single("ConvTranspose", (1, 2, 4, 5), np.ones((2, 3, 3, 3),
                                      np.float32), strides=[2, 2], pads=[1, 0, 0, 1],
                                      output_padding=[1, 1]),
    "maxpool-ceil-pads": lambda: _single("MaxPool", (1, 2, 7, 8), kernel_shape=[3, 3],
                                         strides=[2, 2], pads=[1, 0, 1, 0], ceil_mode=1),
    "avgpool-ceil-exclude-pad": lambda: _single("AveragePool", (1, 2, 7, 8), kernel_shape=[3, 2],
                                                strides=[2, 3], pads=[1, 1, 1, 0], ceil_mode=1),
    "avgpool-include-pad": lambda: _single("AveragePool", (1, 2, 6, 6), kernel_shape=[3, 3],
                                           pads=[1, 1, 1, 1], count_include_pad=1),
    "resize-nearest-asymmetric": lambda: _single(
        "Resize", (1, 2, 3, 4), None, np.array([1, 1, 2, 1.5], np.float32),
        mode="nearest", coordinate_transformation_mode="asymmetric", nearest_mode="floor"),
    "resize-nearest-half-pixel": lambda: _single(
        "Resize", (1, 2, 5, 4), None, None, np.array([1, 2, 3, 7], I64), mode="nearest"),
    "resize-linear-half-pixel": lambda: _single(
        "Resize", (1, 2, 3, 4), None, np.array([1, 1, 2.5, 2], np.float32), mode="linear"),
    "resize-linear-align-corners": lambda: _single(
        "Resize", (1, 2, 3, 4), None, None, np.array([1, 2, 7, 5], I64), mode="linear",
        coordinate_transformation_mode="align_corners"),
    "resize-cubic": lambda: _single("Resize", (1, 2, 4, 4), None,
                                    np.array([1, 1, 2, 2], np.float32), mode="cubic"),
    "slice-negative-step": lambda: _single("Slice", (5, 6), np.array([-1, 4], I64),
                                           np.array([-100, 0], I64), np.array([0, 1], I64),
                                           np.array([-2, -1], I64)),
    "gather-negative-scalar": lambda: _single("Gather", (5, 6), np.array(-2, I64), axis=1),
    "gathernd-batch": lambda: _single("GatherND", (2, 3, 4), np.array([[[1], [0]], [[2], [2]]],
                                      I64), batch_dims=1),
    "scatternd-add": lambda: _single("ScatterND", (4, 3), np.array([[1], [3], [1]], I64),
                                     np.ones((3, 3), np.float32), reduction="add"),
    "pad-reflect": lambda: _single("Pad", (1, 2, 4, 5), np.array([0, 0, 1, 2, 0, 0, 2, 1], I64),
                                   mode="reflect"),
    "pad-edge-axes": lambda: _single("Pad", (2, 4, 5), np.array([1, 2, 0, 3], I64), None,
                                     np.array([-1, 1], I64), mode="edge"),
    "softmax-opset11-coerced": lambda: _single("Softmax", (2, 3, 4), opset=11, axis=1),
    "reduce-mean-axes-input": lambda: _single("ReduceMean", (2, 3, 4), np.array([-1, 0], I64),
                                              keepdims=0),
    "reduce-sum-opset11": lambda: _single("ReduceSum", (2, 3, 4), opset=11, axes=[1]),
    "split-num-outputs": lambda: _single("Split", (2, 7), outputs=3, axis=1, num_outputs=3),
    "topk": lambda: _topk(),
    "cumsum-exclusive-reverse": lambda: _single("CumSum", (3, 5), np.array(1, I64),
                                                exclusive=1, reverse=1),
    "einsum": lambda: _single("Einsum", (2, 3, 4), np.ones((4, 5), np.float32),
                              equation="bij, jk -> bik"),
    "layer-norm-axis": lambda: _single("LayerNormalization", (2, 3, 4),
                                       np.ones((3, 4), np.float32), np.zeros((3, 4), np.float32),
                                       axis=1),
    "group-norm": lambda: _single("GroupNormalization", (2, 4, 3), np.ones(4, np.float32),
                                  np.zeros(4, np.float32), opset=21, num_groups=2),
    "instance-norm": lambda: _single("InstanceNormalization", (2, 3, 4, 5),
                                     np.ones(3, np.float32), np.zeros(3, np.float32)),
    "depth-to-space-crd": lambda: _single("DepthToSpace", (1, 8, 2, 3), blocksize=2, mode="CRD"),
    "gelu-tanh": lambda: _single("Gelu", (3, 4), opset=20, approximate="tanh"),
    "trilu-lower": lambda: _single("Trilu", (3, 4, 5), np.array(1, I64), upper=0),
    "hardswish": lambda: _single("HardSwish", (3, 4)),
    "lstm-bidirectional": lambda: _lstm("bidirectional"),
    "gru-reverse-before-reset": lambda: _lstm("reverse", "GRU", linear_before_reset=1),
    "expand-tile": lambda: _single("Tile", (2, 1, 3), np.array([1, 2, 2], I64)),
    "fast-gelu": lambda: _single("FastGelu", (3, 4), np.ones(4, np.float32),
                                 domain="com.microsoft"),
}
# fmt: on


@pytest.mark.parametrize("case", sorted(CASES))
def test_lowering_matches_onnxruntime_op_by_op(case):
    model = CASES[case]()
    assert_lowering_matches(model, random_inputs(model, input_shapes(model), seed=3), 1e-5)


def test_lowering_matches_control_flow_and_qdq():
    """If with a weight in each branch, Loop with a carried state and a scan output, and a
    QDQ convolution (int8 weights, per-channel scales, uint8 activations)."""
    g = GraphBuilder(opset=18)
    x = g.input([1, 2, 5, 5])
    q = g.rng.integers(-127, 128, (3, 2, 3, 3)).astype(np.int8)
    w = g.op("DequantizeLinear", [g.const(q), g.const(np.full(3, 0.02, np.float32)),
                                  g.const(np.zeros(3, np.int8))], axis=0)  # fmt: skip
    a = g.op("QuantizeLinear", [x, g.const(np.float32(0.05)), g.const(np.uint8(128))])
    a = g.op("DequantizeLinear", [a, g.const(np.float32(0.05)), g.const(np.uint8(128))])
    y = g.op("Conv", [a, w], pads=[1, 1, 1, 1])
    s = g.op("ReduceSum", [y, g.const(np.array([1, 2, 3], I64))], keepdims=0)
    cond = g.op("Greater", [s, g.const(np.zeros(1, np.float32))])
    branch = {}
    for side, scale in (("then", 2.0), ("else", -1.0)):
        inner = helper.make_node("Mul", [y, f"{side}_w"], [f"{side}_out"])
        weight = numpy_helper.from_array(np.full((1, 3, 1, 1), scale, np.float32), f"{side}_w")
        branch[side] = helper.make_graph([inner], side, [], [helper.make_empty_tensor_value_info(
            f"{side}_out")], [weight])  # fmt: skip
    cond = g.op("Squeeze", [cond])
    picked = g.op("If", [cond], then_branch=branch["then"], else_branch=branch["else"])
    body = helper.make_graph(
        [helper.make_node("Add", ["state", "state"], ["next"]),
         helper.make_node("Identity", ["cond_in"], ["cond_out"]),
         helper.make_node("ReduceMax", ["next"], ["scan"], keepdims=0)],
        "body",
        [helper.make_tensor_value_info("i", TensorProto.INT64, []),
         helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
         helper.make_tensor_value_info("state", TensorProto.FLOAT, None)],
        [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
         helper.make_tensor_value_info("next", TensorProto.FLOAT, None),
         helper.make_tensor_value_info("scan", TensorProto.FLOAT, None)],
    )  # fmt: skip
    final, scans = g.op("Loop", [g.const(np.array(3, I64)), "", picked], outputs=2, body=body)
    model = helper.make_model(helper.make_graph(
        g.nodes, "flow", g.inputs, [helper.make_tensor_value_info(n, TensorProto.FLOAT, None)
                                    for n in (final, scans)], g.initializers,
    ), opset_imports=[helper.make_opsetid("", 18)])  # fmt: skip
    model.ir_version = 8
    assert_lowering_matches(model, random_inputs(model, input_shapes(model), seed=1), 1e-5)
    # The int8 weight trains through its dequantization; the branches' scales too.
    names = {w.name: w for w in LoweredModel(model).weights}
    assert names[model.graph.node[0].input[0]].quantized is not None
    assert {"then_w", "else_w"} <= set(names)


REAL = ["example", "tx-bert.classic", "tx-bert.dynamo", "fused-bert", "fused-llama_gqa",
        "silero_vad", "ppocr_cls"]  # tools/bench_recovery_coverage.py runs them all


def _real(name: str) -> tuple[onnx.ModelProto, list[dict]]:
    if name == "example":
        model = onnx.load(EXAMPLE)
    elif name.startswith("fused-"):
        from fused_models import cached

        model = onnx.load(cached(name.removeprefix("fused-")))
    elif name.startswith("tx-"):
        from models.transformers_zoo import cached

        model = onnx.load(cached(*name.removeprefix("tx-").split(".")))
    elif "." in name:
        from models.export import cached

        model = onnx.load(cached(*name.split(".")))
    else:
        thirdparty = pytest.importorskip("thirdparty")
        try:
            path = thirdparty.fetch(name)
        except thirdparty.ThirdPartyUnavailable as error:
            pytest.skip(str(error))
        feeds = thirdparty.validation_input(name)
        other_rate = {"sr": np.array(8000, np.int64), "input": np.linspace(
            -1, 1, 256, dtype=np.float32)[None]}  # silero_vad's other branch  # fmt: skip
        return onnx.load(path), [feeds, {**feeds, **other_rate}] if name == "silero_vad" else [
            feeds]  # fmt: skip
    return model, [random_inputs(model, input_shapes(model), seed=0)]


@pytest.mark.parametrize("name", REAL)
def test_lowering_matches_onnxruntime_on_real_models(name):
    """Exports of both torch exporters, onnxruntime's fused transformer ops (Attention,
    GroupQueryAttention with rotary), Silero VAD (If branches, LSTM; both sample rates) and
    a Paddle model whose weights are Constant nodes; every weight gets a gradient path."""
    model, runs = _real(name)
    lowered = LoweredModel(model, "all")
    names = [o.name for o in model.graph.output]
    for feeds in runs:
        assert_lowering_matches(model, feeds)
        got = lowered(feeds_to_torch(feeds, torch.device("cpu")), names)
        sum(g.square().mean() for g in got if g.is_floating_point()).backward()
    reached = [p for p in lowered.parameters() if p.grad is not None and bool(p.grad.any())]
    assert len(lowered.weights) > 0 and len(reached) >= 0.9 * len(lowered.weights)


def test_an_op_without_a_rule_is_refused_by_name(tmp_path):
    g = GraphBuilder()
    x = g.input([2, 3])
    g.output(g.op("Relu", [g.op("MyCustomOp", [x], domain="com.example")]))
    graph = g.nodes
    model = helper.make_model(helper.make_graph(graph, "m", g.inputs, [
        helper.make_tensor_value_info(g.outputs[0], TensorProto.FLOAT, [2, 3])]),
        opset_imports=[helper.make_opsetid("", 18), helper.make_opsetid("com.example", 1)])
    with pytest.raises(GraphpruneError, match=r"cannot train op com\.example:MyCustomOp"):
        LoweredModel(model)


def test_lookup_tables_train_only_when_asked():
    """A Gather's table (token embeddings) stays by default: a few thousand samples would
    move only the rows they read. `--train all` trains it; the matrix after it always."""
    table = numpy_helper.from_array(np.ones((10, 4), np.float32), "table")
    weight = numpy_helper.from_array(np.ones((4, 3), np.float32), "weight")
    graph = helper.make_graph(
        [helper.make_node("Gather", ["table", "ids"], ["rows"]),
         helper.make_node("MatMul", ["rows", "weight"], ["y"])], "lookup",
        [helper.make_tensor_value_info("ids", TensorProto.INT64, [2, 5])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 5, 3])], [table, weight],
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    assert [w.name for w in LoweredModel(model).weights] == ["weight"]
    assert sorted(w.name for w in LoweredModel(model, "all").weights) == ["table", "weight"]


# Distillation on a real pruned model.


@pytest.fixture(scope="module")
def pruned_pair(tmp_path_factory):
    """The bundled ResNet pruned by half (L2, no repair): a student that has much to learn."""
    folder = tmp_path_factory.mktemp("pair")
    assert main(["prune", str(EXAMPLE), "-o", str(folder / "pruned.onnx"), "--ratio", "0.5",
                 "--no-validate"]) == 0  # fmt: skip
    return onnx.load(folder / "pruned.onnx"), onnx.load(EXAMPLE)


DATA = TrainingData(random=32, shapes={"input": (3, 32, 32)})


@pytest.fixture(scope="module")
def trained(pruned_pair):
    student, teacher = pruned_pair
    return finetune(student, teacher, DATA, FinetuneOptions(steps=16, **FAST))


def test_distillation_lowers_the_loss_and_the_deviation(trained):
    report = trained.report
    assert report["loss_after"]["total"] < 0.5 * report["loss_before"]["total"]
    assert report["deviation_after"] < report["deviation_before"]
    assert report["steps"] == 16 and report["trained_tensors"] == 24


def test_only_weight_values_change(pruned_pair, trained):
    student, model = pruned_pair[0], trained.model
    assert [(n.op_type, list(n.input), list(n.output), list(n.attribute))
            for n in model.graph.node] == [(n.op_type, list(n.input), list(n.output),
                                            list(n.attribute)) for n in student.graph.node]
    assert model.graph.input == student.graph.input and model.graph.output == student.graph.output
    before = {t.name: t for t in student.graph.initializer}
    changed = 0
    for tensor in model.graph.initializer:
        old = before.pop(tensor.name)
        assert (tensor.data_type, list(tensor.dims)) == (old.data_type, list(old.dims))
        changed += not np.array_equal(numpy_helper.to_array(tensor), numpy_helper.to_array(old))
    assert not before and changed == 24
    assert model.opset_import == student.opset_import and model.ir_version == student.ir_version


def test_the_same_run_gives_the_same_bytes_and_a_resumed_run_ends_alike(pruned_pair, trained,
                                                                       tmp_path):  # fmt: skip
    student, teacher = pruned_pair
    folder = tmp_path / "checkpoints"
    options = FinetuneOptions(steps=16, checkpoint_dir=str(folder), checkpoint_every=6, **FAST)
    again = finetune(student, teacher, DATA, options)
    assert again.model.SerializeToString() == trained.model.SerializeToString()
    assert sorted(p.name for p in folder.iterdir()) == ["checkpoint-00000012.pt",
                                                         "checkpoint-00000016.pt"]
    (folder / "checkpoint-00000016.pt").unlink()  # as if stopped after step 12
    resumed = finetune(student, teacher, DATA, FinetuneOptions(
        steps=16, checkpoint_dir=str(folder), checkpoint_every=6, resume=True, **FAST))
    assert resumed.report["resumed_at"] == 12
    assert resumed.model.SerializeToString() == trained.model.SerializeToString()
    other = FinetuneOptions(steps=16, checkpoint_dir=str(folder), resume=True, **{**FAST,
                                                                                  "lr": 5e-4})
    with pytest.raises(GraphpruneError, match="written by another run"):
        finetune(student, teacher, DATA, other)


def test_features_are_where_pruned_regions_end():
    """BERT with its MLPs halved: the tensors matched are the MLP output projections."""
    from models.transformers_zoo import cached

    model = gp.load(cached("bert", "classic"))
    analysis = gp.analyze(model)
    plan = gp.plan(analysis, gp.PlanOptions(ratio=0.5, only=("mlp",)))
    pruned = gp.prune(analysis, plan)
    feeds = random_inputs(model, input_shapes(model), seed=0)
    points = feature_points(pruned, model, feeds)
    assert points == [f"/model/encoder/layer.{i}/output/dense/MatMul_output_0" for i in (0, 1)]


def _qdq_pair(half: bool = False):
    """A float teacher and a student of the same graph holding its weights as int8 codes
    behind DequantizeLinear (per-channel scales), or as float16."""
    rng = np.random.default_rng(0)
    w = rng.standard_normal((6, 4)).astype(np.float32)
    b = rng.standard_normal(6).astype(np.float32)

    def model(weights, nodes, dtype=TensorProto.FLOAT):
        graph = helper.make_graph(
            nodes, "m", [helper.make_tensor_value_info("x", dtype, [None, 4])],
            [helper.make_tensor_value_info("y", dtype, [None, 6])], weights,
        )  # fmt: skip
        m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
        m.ir_version = 8
        return m

    teacher = model([numpy_helper.from_array(w.T.copy(), "w"), numpy_helper.from_array(b, "b")],
                    [helper.make_node("MatMul", ["x", "w"], ["h"]),
                     helper.make_node("Add", ["h", "b"], ["y"])])  # fmt: skip
    noisy = w.T + 0.3 * rng.standard_normal((4, 6)).astype(np.float32)
    if half:
        student = model([numpy_helper.from_array(noisy.astype(np.float16), "w"),
                         numpy_helper.from_array(b.astype(np.float16), "b")],
                        [helper.make_node("MatMul", ["x", "w"], ["h"]),
                         helper.make_node("Add", ["h", "b"], ["y"])], TensorProto.FLOAT16)
        return student, None
    scale = (np.abs(noisy).max(0) / 127).astype(np.float32)
    codes = np.clip(np.round(noisy / scale), -127, 127).astype(np.int8)
    student = model(
        [numpy_helper.from_array(codes, "wq"), numpy_helper.from_array(scale, "ws"),
         numpy_helper.from_array(np.zeros(6, np.int8), "wz"), numpy_helper.from_array(b, "b")],
        [helper.make_node("DequantizeLinear", ["wq", "ws", "wz"], ["w"], axis=1),
         helper.make_node("MatMul", ["x", "w"], ["h"]), helper.make_node("Add", ["h", "b"], ["y"])],
    )  # fmt: skip
    return student, teacher


def test_quantized_weights_train_as_codes_with_their_own_scales():
    student, teacher = _qdq_pair()
    data = TrainingData(random=64, shapes={"x": (4,)})
    result = finetune(student, teacher, data, FinetuneOptions(steps=40, **{**FAST, "lr": 3e-2}))
    stored = {t.name: t for t in result.model.graph.initializer}
    old = {t.name: t for t in student.graph.initializer}
    assert stored["wq"].data_type == TensorProto.INT8
    assert stored["ws"] == old["ws"] and stored["wz"] == old["wz"]  # scales untouched
    codes = numpy_helper.to_array(stored["wq"])
    assert not np.array_equal(codes, numpy_helper.to_array(old["wq"]))
    assert result.model.graph.node == student.graph.node
    assert result.report["loss_after"]["total"] < 0.5 * result.report["loss_before"]["total"]


def test_float16_weights_stay_float16(tmp_path):
    student, _ = _qdq_pair(half=True)
    teacher = onnx.ModelProto()
    teacher.CopyFrom(student)
    rng = np.random.default_rng(1)
    for tensor in teacher.graph.initializer:
        value = numpy_helper.to_array(tensor)
        tensor.CopyFrom(numpy_helper.from_array(
            (value + rng.standard_normal(value.shape)).astype(np.float16), tensor.name))
    result = finetune(student, teacher, TrainingData(random=64, shapes={"x": (4,)}),
                      FinetuneOptions(steps=30, **{**FAST, "lr": 3e-2}))  # fmt: skip
    assert {t.data_type for t in result.model.graph.initializer} == {TensorProto.FLOAT16}
    assert result.model.graph.node == student.graph.node
    assert result.report["loss_after"]["total"] < 0.8 * result.report["loss_before"]["total"]


# The command line.


def _listing(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def test_finetune_command_writes_only_what_was_asked(pruned_pair, tmp_path, monkeypatch, capsys):
    student, _ = pruned_pair
    onnx.save(student, tmp_path / "pruned.onnx")
    np.savez(tmp_path / "data.npz", input=np.random.default_rng(0).standard_normal(
        (24, 3, 32, 32)).astype(np.float32))  # fmt: skip
    temp = tmp_path / "tmp"
    temp.mkdir()
    monkeypatch.setenv("TMPDIR", str(temp))
    monkeypatch.chdir(tmp_path)
    before = _listing(tmp_path)
    code = main(["finetune", "pruned.onnx", "-o", "out.onnx", "--teacher", str(EXAMPLE),
                 "--data", "data.npz", "--steps", "6", "--batch", "8", "--threads", "1",
                 "--report", "report.json"])  # fmt: skip
    assert code == 0
    assert _listing(tmp_path) == sorted([*before, "out.onnx", "report.json"])
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["steps"] == 6 and report["samples"] == 24
    assert "finetuned 24 weights" in capsys.readouterr().out
    onnx.checker.check_model(onnx.load(tmp_path / "out.onnx"), full_check=True)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--steps", "0"], "--steps must be at least 1"),
        (["--resume"], "--resume needs --checkpoint-dir"),
        (["--loss", "kl", "--epochs", "1", "--steps", "3"], "--steps or --epochs, not both"),
        (["--data-random", "4"], "--data NPZ_OR_DIR or --data-random N"),
        (["--teacher-swap"], "inputs"),
    ],
)
def test_finetune_refuses_bad_input_in_one_line(pruned_pair, tmp_path, capsys, extra, message):
    onnx.save(pruned_pair[0], tmp_path / "pruned.onnx")
    np.savez(tmp_path / "data.npz", input=np.zeros((4, 3, 32, 32), np.float32))
    teacher = str(EXAMPLE)
    if extra == ["--teacher-swap"]:  # a teacher with other inputs
        g = GraphBuilder()
        g.output(g.op("Relu", [g.input([1, 4], name="other")]))
        onnx.save(g.model(), tmp_path / "other.onnx")
        teacher, extra = str(tmp_path / "other.onnx"), []
    code = main(["finetune", str(tmp_path / "pruned.onnx"), "-o", str(tmp_path / "out.onnx"),
                 "--teacher", teacher, "--data", str(tmp_path / "data.npz"), *extra])
    err = capsys.readouterr().err
    assert code == 1 and message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out.onnx").exists()


def test_finetune_without_torch_says_how_to_install(tmp_path, monkeypatch, capsys):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "torch" else real(name, *a))
    np.savez(tmp_path / "data.npz", input=np.zeros((4, 3, 32, 32), np.float32))
    code = main(["finetune", str(EXAMPLE), "-o", str(tmp_path / "out.onnx"), "--teacher",
                 str(EXAMPLE), "--data", str(tmp_path / "data.npz")])  # fmt: skip
    assert code == 1 and "pip install 'graphprune[train]'" in capsys.readouterr().err


def test_prune_recover_distils_on_the_calibration_data(tmp_path, capsys):
    out = tmp_path / "small.onnx"
    code = main(["prune", str(EXAMPLE), "-o", str(out), "--ratio", "0.5", "--calib-random",
                 "16", "--calib-batch", "8", "--recover", "6", "--recover-lr", "1e-3",
                 "--report", str(tmp_path / "r.json")])  # fmt: skip
    assert code == 0
    report = json.loads((tmp_path / "r.json").read_text())
    recovery = report["recovery"]
    assert recovery["steps"] == 6 and recovery["loss_after"]["total"] < recovery[
        "loss_before"]["total"]  # fmt: skip
    # The validation in the report is of the recovered model, which is what was written.
    written = onnx.load(out)
    feeds = random_inputs(written, input_shapes(written), seed=0)
    assert recovery["deviation_after"] > 0 and outputs(written, feeds)
    assert "recovered: 6 steps" in capsys.readouterr().out
    assert main(["prune", str(EXAMPLE), "-o", str(out), "--ratio", "0.5", "--recover", "3"]) == 1


def test_sweep_recover_scores_the_recovered_models(tmp_path):
    out = tmp_path / "sweep.json"
    code = main(["sweep", str(EXAMPLE), "-o", str(out), "--ratios", "0.5", "--calib-random", "8",
                 "--recover", "2", "--threads", "1", "--repeats", "2"])  # fmt: skip
    assert code == 0
    data = json.loads(out.read_text())
    assert data["quality"].endswith("after 2 steps of recovery")
    assert data["runs"][1]["recovery"]["steps"] == 2
    assert os.path.exists(out)
