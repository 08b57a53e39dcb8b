"""Small valid ONNX models and the hostile mutations of them that `tools/fuzz.py` feeds to
graphprune. Everything is built with onnx.helper from a seeded generator: the same seed gives
the same bytes. A mutation takes a model (a copy) and a `random.Random` and returns the
mutated ModelProto, or bytes when it breaks the protobuf itself."""

from __future__ import annotations

import random
from collections.abc import Callable

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17
IR_VERSION = 8
FLOAT = TensorProto.FLOAT
DATA_FILE = "weights.bin"  # the external data file of the "external" model, next to it


def _weight(rng: np.random.Generator, name: str, *shape: int) -> onnx.TensorProto:
    return numpy_helper.from_array(rng.standard_normal(shape).astype(np.float32), name)


def _model(nodes, inputs, outputs, initializers) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "fuzz", inputs, outputs, initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = IR_VERSION
    return model


def conv_net(
    *, cin: int = 3, width: int = 8, classes: int = 4, size: int = 8, batch: int = 1
) -> onnx.ModelProto:
    """Conv-Relu-Conv with a residual Add, pooling and a Gemm head: x[1,3,8,8] -> y[1,4]
    (the dims are parameters: the zero-sized variants set one to 0)."""
    rng = np.random.default_rng(0)
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], "conv1", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"], "relu1"),
        helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], "conv2", pads=[1, 1, 1, 1]),
        helper.make_node("Add", ["r1", "c2"], ["a"], "add"),
        helper.make_node("GlobalAveragePool", ["a"], ["g"], "pool"),
        helper.make_node("Flatten", ["g"], ["f"], "flatten"),
        helper.make_node("Gemm", ["f", "wf", "bf"], ["y"], "fc", transB=1),
    ]
    weights = [
        _weight(rng, "w1", width, cin, 3, 3), _weight(rng, "b1", width),
        _weight(rng, "w2", width, width, 3, 3), _weight(rng, "b2", width),
        _weight(rng, "wf", classes, width), _weight(rng, "bf", classes),
    ]  # fmt: skip
    return _model(
        nodes,
        [helper.make_tensor_value_info("x", FLOAT, [batch, cin, size, size])],
        [helper.make_tensor_value_info("y", FLOAT, [batch, classes])],
        weights,
    )


def attention_net(
    *, dim: int = 16, hidden: int = 32, head: int = 8, seq: int = 4
) -> onnx.ModelProto:
    """An MLP (MatMul-Add-Relu-MatMul) then single-head attention: x[1,4,16] -> y[1,4,16]
    (the dims are parameters: the zero-sized variants set one to 0)."""
    rng = np.random.default_rng(1)
    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["m1"], "up"),
        helper.make_node("Add", ["m1", "b1"], ["h1"], "up_bias"),
        helper.make_node("Relu", ["h1"], ["r"], "act"),
        helper.make_node("MatMul", ["r", "w2"], ["m2"], "down"),
        helper.make_node("Add", ["m2", "b2"], ["o"], "down_bias"),
        helper.make_node("MatMul", ["o", "wq"], ["q"], "query"),
        helper.make_node("MatMul", ["o", "wk"], ["k"], "key"),
        helper.make_node("MatMul", ["o", "wv"], ["v"], "value"),
        helper.make_node("Transpose", ["k"], ["kt"], "key_t", perm=[0, 2, 1]),
        helper.make_node("MatMul", ["q", "kt"], ["s"], "scores"),
        helper.make_node("Softmax", ["s"], ["p"], "softmax", axis=-1),
        helper.make_node("MatMul", ["p", "v"], ["y"], "mix"),
    ]
    weights = [
        _weight(rng, "w1", dim, hidden), _weight(rng, "b1", hidden),
        _weight(rng, "w2", hidden, dim), _weight(rng, "b2", dim),
        _weight(rng, "wq", dim, head), _weight(rng, "wk", dim, head), _weight(rng, "wv", dim, dim),
    ]  # fmt: skip
    return _model(
        nodes,
        [helper.make_tensor_value_info("x", FLOAT, ["batch", seq, dim])],
        [helper.make_tensor_value_info("y", FLOAT, ["batch", seq, dim])],
        weights,
    )


def if_net() -> onnx.ModelProto:
    """A Conv whose output goes through an If (Relu or Sigmoid, chosen by its mean's sign),
    then another Conv: both branches read the first Conv's output from the outer scope."""
    rng = np.random.default_rng(2)
    branch_out = [helper.make_tensor_value_info("z", FLOAT, [1, 8, 8, 8])]
    then = helper.make_graph([helper.make_node("Relu", ["c1"], ["z"])], "then", [], branch_out)
    other = helper.make_graph([helper.make_node("Sigmoid", ["c1"], ["z"])], "else", [], branch_out)
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], "conv1", pads=[1, 1, 1, 1]),
        helper.make_node("ReduceMean", ["c1"], ["mean"], "mean", keepdims=0),
        helper.make_node("Greater", ["mean", "zero"], ["positive"], "sign"),
        helper.make_node("If", ["positive"], ["z"], "branch", then_branch=then, else_branch=other),
        helper.make_node("Conv", ["z", "w2", "b2"], ["y"], "conv2", pads=[1, 1, 1, 1]),
    ]
    weights = [
        _weight(rng, "w1", 8, 3, 3, 3), _weight(rng, "b1", 8),
        _weight(rng, "w2", 4, 8, 3, 3), _weight(rng, "b2", 4),
        numpy_helper.from_array(np.zeros((), np.float32), "zero"),
    ]  # fmt: skip
    return _model(
        nodes,
        [helper.make_tensor_value_info("x", FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("y", FLOAT, [1, 4, 8, 8])],
        weights,
    )


def loop_net(trips: int = 3) -> onnx.ModelProto:
    """x[1,8] -> Gemm -> a Loop adding a constant `trips` times (cond always true) -> Gemm."""
    rng = np.random.default_rng(3)
    body = helper.make_graph(
        [
            helper.make_node("Identity", ["cond_in"], ["cond_out"]),
            helper.make_node("Add", ["v_in", "step"], ["v_out"]),
        ],
        "body",
        [
            helper.make_tensor_value_info("i", TensorProto.INT64, []),
            helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
            helper.make_tensor_value_info("v_in", FLOAT, [1, 8]),
        ],
        [
            helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
            helper.make_tensor_value_info("v_out", FLOAT, [1, 8]),
        ],
    )
    nodes = [
        helper.make_node("Gemm", ["x", "w1", "b1"], ["h"], "fc1", transB=1),
        helper.make_node("Loop", ["trips", "go", "h"], ["v"], "loop", body=body),
        helper.make_node("Gemm", ["v", "w2", "b2"], ["y"], "fc2", transB=1),
    ]
    weights = [
        _weight(rng, "w1", 8, 8), _weight(rng, "b1", 8),
        _weight(rng, "w2", 4, 8), _weight(rng, "b2", 4),
        numpy_helper.from_array(np.full((1, 8), 0.5, np.float32), "step"),
        numpy_helper.from_array(np.array(trips, np.int64), "trips"),
        numpy_helper.from_array(np.array(True), "go"),
    ]  # fmt: skip
    return _model(
        nodes,
        [helper.make_tensor_value_info("x", FLOAT, [1, 8])],
        [helper.make_tensor_value_info("y", FLOAT, [1, 4])],
        weights,
    )


def externalize(model: onnx.ModelProto) -> tuple[onnx.ModelProto, bytes]:
    """The model with every initializer's bytes moved to DATA_FILE, and that file's bytes."""
    model = _copy(model)
    blob = bytearray()
    for tensor in model.graph.initializer:
        raw = numpy_helper.to_array(tensor).tobytes()
        offset = len(blob)
        blob += raw + bytes(-len(raw) % 16)  # aligned like onnx's own writer
        tensor.ClearField("float_data")
        tensor.ClearField("int64_data")
        tensor.ClearField("int32_data")
        tensor.ClearField("raw_data")
        tensor.data_location = TensorProto.EXTERNAL
        for key, value in (("location", DATA_FILE), ("offset", offset), ("length", len(raw))):
            entry = tensor.external_data.add()
            entry.key, entry.value = key, str(value)
    return model, bytes(blob)


def _zero_side_branch() -> onnx.ModelProto:
    """The attention net with a side MatMul of no outputs ([16, 0]) on the MLP's output,
    concatenated to the values: a consumer of a prunable group whose weight is empty."""
    model = attention_net()
    graph = model.graph
    graph.initializer.append(numpy_helper.from_array(np.zeros((16, 0), np.float32), "w0"))
    side = helper.make_node("MatMul", ["o", "w0"], ["side"], "side")
    cat = helper.make_node("Concat", ["v", "side"], ["cat"], "cat", axis=-1)
    mix = next(node for node in graph.node if node.name == "mix")
    mix.input[1] = "cat"
    position = list(graph.node).index(mix)
    graph.node.insert(position, cat)
    graph.node.insert(position, side)
    return model


def _zero_split() -> onnx.ModelProto:
    """The conv net whose first activation is split into 8 and 0 channels."""
    model = conv_net()
    graph = model.graph
    graph.initializer.append(numpy_helper.from_array(np.array([8, 0], np.int64), "sizes"))
    split = helper.make_node("Split", ["r1", "sizes"], ["s8", "s0"], "split", axis=1)
    conv2 = next(node for node in graph.node if node.name == "conv2")
    conv2.input[0] = "s8"
    graph.node.insert(list(graph.node).index(conv2), split)
    return model


def _zero_concat() -> onnx.ModelProto:
    """The conv net with an empty [1, 0, 8, 8] initializer concatenated to an activation."""
    model = conv_net()
    graph = model.graph
    graph.initializer.append(numpy_helper.from_array(np.zeros((1, 0, 8, 8), np.float32), "e"))
    cat = helper.make_node("Concat", ["r1", "e"], ["r1e"], "cat", axis=1)
    conv2 = next(node for node in graph.node if node.name == "conv2")
    conv2.input[0] = "r1e"
    graph.node.insert(list(graph.node).index(conv2), cat)
    return model


# Models with a zero-sized dim somewhere: a layer of no channels, an empty weight, an
# input with an empty axis, empty pieces of a Split or Concat. Valid ONNX all of them.
ZERO_DIMS: dict[str, Callable[[], onnx.ModelProto]] = {
    "conv width 0": lambda: conv_net(width=0),
    "conv classes 0": lambda: conv_net(classes=0),
    "conv input channels 0": lambda: conv_net(cin=0),
    "conv image size 0": lambda: conv_net(size=0),
    "conv batch 0": lambda: conv_net(batch=0),
    "attention hidden 0": lambda: attention_net(hidden=0),
    "attention head 0": lambda: attention_net(head=0),
    "attention model dim 0": lambda: attention_net(dim=0),
    "attention sequence 0": lambda: attention_net(seq=0),
    "attention side branch of 0 outputs": _zero_side_branch,
    "conv split into 8 and 0": _zero_split,
    "conv concat of an empty constant": _zero_concat,
}


BASES: dict[str, Callable[[], onnx.ModelProto]] = {
    "conv": conv_net, "attention": attention_net, "if": if_net, "loop": loop_net,
}  # fmt: skip


def _copy(model: onnx.ModelProto) -> onnx.ModelProto:
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    return copy


# Mutations of a loaded model. Each returns the mutated model (or raw bytes).


def truncate(model: onnx.ModelProto, rng: random.Random) -> bytes:
    data = model.SerializeToString()
    return data[: rng.randrange(len(data))]


def bit_flip(model: onnx.ModelProto, rng: random.Random) -> bytes:
    data = bytearray(model.SerializeToString())
    for _ in range(rng.choice([1, 2, 8, 64])):
        data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
    return bytes(data)


def undefined_type(model: onnx.ModelProto, rng: random.Random) -> onnx.ModelProto:
    model = _copy(model)
    if rng.random() < 0.5:
        rng.choice(model.graph.initializer).data_type = TensorProto.UNDEFINED
    else:
        model.graph.input[0].type.tensor_type.elem_type = TensorProto.UNDEFINED
    return model


def cycle(model: onnx.ModelProto, rng: random.Random) -> onnx.ModelProto:
    """A node reads the output of itself or of a later node."""
    model = _copy(model)
    nodes = model.graph.node
    first = rng.randrange(len(nodes))
    later = rng.randrange(first, len(nodes))
    node = nodes[first]
    node.input[rng.randrange(len(node.input))] = nodes[later].output[0]
    return model


def dangling(model: onnx.ModelProto, rng: random.Random) -> onnx.ModelProto:
    model = _copy(model)
    node = rng.choice(model.graph.node)
    node.input[rng.randrange(len(node.input))] = "nobody_makes_this"
    return model


def duplicate_names(model: onnx.ModelProto, rng: random.Random) -> onnx.ModelProto:
    model = _copy(model)
    graph = model.graph
    choice = rng.randrange(4)
    if choice == 0:  # every node named alike
        for node in graph.node:
            node.name = "same"
    elif choice == 1:  # two initializers with one name
        graph.initializer[1].name = graph.initializer[0].name
    elif choice == 2:  # two nodes write one tensor
        graph.node[1].output[0] = graph.node[0].output[0]
    else:  # an input named like an initializer of another shape
        graph.initializer[0].name = graph.input[0].name
    return model


def wrong_weight_dims(model: onnx.ModelProto, rng: random.Random) -> onnx.ModelProto:
    """A weight whose dims disagree with its consumer (Conv in-channels, Gemm/MatMul K)."""
    model = _copy(model)
    tensor = rng.choice([t for t in model.graph.initializer if len(t.dims) >= 2])
    value = numpy_helper.to_array(tensor)
    axis = rng.randrange(value.ndim)
    size = rng.choice([1, value.shape[axis] + 1, value.shape[axis] * 2])
    shape = list(value.shape)
    shape[axis] = size
    tensor.CopyFrom(numpy_helper.from_array(np.ones(shape, value.dtype), tensor.name))
    return model


def bad_dims(model: onnx.ModelProto, rng: random.Random) -> onnx.ModelProto:
    """Zero, negative or huge dims on the input or on a weight (whose data stays small)."""
    model = _copy(model)
    size = rng.choice([0, -1, -5, 10**6, 10**12, 2**62])
    if rng.random() < 0.5:
        dims = model.graph.input[0].type.tensor_type.shape.dim
        dim = dims[rng.randrange(len(dims))]
        dim.Clear()
        dim.dim_value = size
    else:
        tensor = rng.choice(model.graph.initializer)
        if tensor.dims:
            tensor.dims[rng.randrange(len(tensor.dims))] = size
        else:
            tensor.dims.append(size)
    return model


def special_weights(model: onnx.ModelProto, rng: random.Random) -> onnx.ModelProto:
    """NaN, inf or zero weights, everywhere or in a few positions."""
    model = _copy(model)
    fill = rng.choice([np.nan, np.inf, -np.inf, 0.0, 1e38])
    for tensor in model.graph.initializer:
        value = numpy_helper.to_array(tensor).copy()
        if value.dtype != np.float32 or (rng.random() < 0.5 and value.size > 1):
            continue
        flat = value.reshape(-1)
        flat[:: rng.choice([1, 2, max(1, value.size // 3)])] = fill
        tensor.CopyFrom(numpy_helper.from_array(value, tensor.name))
    return model


def unknown_op(model: onnx.ModelProto, rng: random.Random) -> onnx.ModelProto:
    model = _copy(model)
    node = rng.choice(model.graph.node)
    if rng.random() < 0.5:
        node.op_type = "Frobnicate"
    else:
        node.domain = "com.example.nowhere"
        model.opset_import.append(helper.make_opsetid("com.example.nowhere", 1))
    return model


def versions(model: onnx.ModelProto, rng: random.Random) -> onnx.ModelProto:
    """Ancient or future opsets and IR versions."""
    model = _copy(model)
    choice = rng.randrange(4)
    if choice == 0:
        model.opset_import[0].version = rng.randint(1, 6)
    elif choice == 1:
        model.opset_import[0].version = 99
    elif choice == 2:
        model.ir_version = 99
    else:
        del model.opset_import[:]
    return model


def empty_graph(model: onnx.ModelProto, rng: random.Random) -> onnx.ModelProto:
    model = _copy(model)
    what = rng.randrange(3)
    if what == 0:
        del model.graph.node[:]
    elif what == 1:
        del model.graph.output[:]
    else:
        del model.graph.node[:]
        del model.graph.initializer[:]
        del model.graph.input[:]
        del model.graph.output[:]
    return model


def output_is_input(model: onnx.ModelProto, rng: random.Random) -> onnx.ModelProto:
    model = _copy(model)
    output = model.graph.output.add() if rng.random() < 0.5 else model.graph.output[0]
    output.CopyFrom(model.graph.input[0])
    return model


def subgraph(model: onnx.ModelProto, rng: random.Random) -> onnx.ModelProto:
    """Break an If branch or a Loop body: a dangling read, no outputs, an unknown op."""
    model = _copy(model)
    holder = next(n for n in model.graph.node if n.op_type in ("If", "Loop"))
    body = rng.choice(list(holder.attribute)).g
    choice = rng.randrange(4)
    if choice == 0:
        body.node[-1].input[0] = "nobody_makes_this"
    elif choice == 1:
        del body.output[:]
    elif choice == 2:
        body.node[-1].op_type = "Frobnicate"
    else:
        del body.node[:]
    return model


MUTATIONS: dict[str, Callable[[onnx.ModelProto, random.Random], onnx.ModelProto | bytes]] = {
    "truncate": truncate,
    "bitflip": bit_flip,
    "undefined_type": undefined_type,
    "cycle": cycle,
    "dangling": dangling,
    "duplicate_names": duplicate_names,
    "weight_dims": wrong_weight_dims,
    "bad_dims": bad_dims,
    "special_weights": special_weights,
    "unknown_op": unknown_op,
    "versions": versions,
    "empty_graph": empty_graph,
    "output_is_input": output_is_input,
    "subgraph": subgraph,
}
