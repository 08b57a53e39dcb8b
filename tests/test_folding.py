"""Folding while loading: values known before the run become initializers, exactly."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

import graphprune as gp


def _model(nodes, initializers, x_shape, outputs) -> onnx.ModelProto:
    graph = helper.make_graph(
        nodes,
        "fold",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape)],
        [helper.make_tensor_value_info(name, TensorProto.UNDEFINED, None) for name in outputs],
        [numpy_helper.from_array(np.asarray(v), k) for k, v in initializers.items()],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _initializer(model: onnx.ModelProto, suffix: str) -> onnx.TensorProto:
    (found,) = [t for t in model.graph.initializer if t.name.endswith(suffix)]
    return found


def test_a_scalar_folds_to_a_scalar():
    """Gather of a static dim with a scalar index is a 0-d value; a [1] there would change
    the rank of everything computed from it (a dynamic-batch ViT's reshape targets)."""
    nodes = [
        helper.make_node("Shape", ["x"], ["shape"]),
        helper.make_node("Gather", ["shape", "one"], ["seq"], axis=0),
        helper.make_node("Mul", ["batch", "seq"], ["rows"]),
        helper.make_node("Gather", ["shape", "zero"], ["batch"], axis=0),
    ]
    nodes = [nodes[0], nodes[1], nodes[3], nodes[2]]
    model = _model(nodes, {"zero": np.array(0), "one": np.array(1)}, ["N", 17, 8], ["rows"])
    loaded = gp.load(model)
    assert list(_initializer(loaded, "seq_folded").dims) == []
    assert [n.op_type for n in loaded.graph.node] == ["Shape", "Gather", "Mul"]


def test_folding_repeats_until_nothing_more_folds():
    """Pad's pads are computed (a Cast), so its output shape is known only after that
    folds; the Shape of the output then folds in the next pass (Swin's window partition)."""
    nodes = [
        helper.make_node("Cast", ["pads_i32"], ["pads"], to=TensorProto.INT64),
        helper.make_node("Pad", ["x", "pads"], ["padded"]),
        helper.make_node("Shape", ["padded"], ["shape"]),
        helper.make_node("Gather", ["shape", "two"], ["width"], axis=0),
        helper.make_node("Unsqueeze", ["width", "zero"], ["width_1d"]),
        helper.make_node("Concat", ["minus_one", "width_1d"], ["target"], axis=0),
        helper.make_node("Reshape", ["padded", "target"], ["y"]),
    ]
    constants = {
        "pads_i32": np.array([0, 0, 0, 0, 0, 2], np.int32),
        "two": np.array(2),
        "zero": np.array([0]),
        "minus_one": np.array([-1]),
    }
    loaded = gp.load(_model(nodes, constants, [1, 3, 6], ["y"]))
    assert [n.op_type for n in loaded.graph.node] == ["Pad", "Reshape"]
    assert numpy_helper.to_array(_initializer(loaded, "target_folded")).tolist() == [-1, 8]


def test_identity_folds_shape_vectors_but_leaves_weights_in_place():
    nodes = [
        helper.make_node("Identity", ["target"], ["target_copy"]),
        helper.make_node("Reshape", ["x", "target_copy"], ["flat"]),
        helper.make_node("Identity", ["w"], ["w_shared"]),
        helper.make_node("MatMul", ["flat", "w_shared"], ["y"]),
    ]
    constants = {"target": np.array([1, 12]), "w": np.ones((12, 4), np.float32)}
    loaded = gp.load(_model(nodes, constants, [1, 3, 4], ["y"]))
    assert [n.op_type for n in loaded.graph.node] == ["Reshape", "Identity", "MatMul"]
    assert sorted(t.name for t in loaded.graph.initializer) == ["target_copy_folded", "w"]
