"""The prunable compute layers of a model as one-layer models: which weight axes a plan
shrinks ("out": a layer's output channels, "in": its input channels), and the layer (with
the activation that follows it) rebuilt at any width of one axis, for timing alone."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper, numpy_helper

from ..core.analysis import Analysis
from ..core.channels import SliceConstant, SliceGroupedInput
from ..errors import GraphpruneError
from ..io.protos import node_attribute

# Activations that follow a layer elementwise: timed with it (their cost is memory traffic
# at the layer's width).
_NEIGHBOURS = {
    "Relu",
    "Clip",
    "Sigmoid",
    "Tanh",
    "LeakyRelu",
    "HardSigmoid",
    "HardSwish",
    "Elu",
    "Selu",
    "Softplus",
    "Gelu",
    "Erf",
}


def layer_axes(analysis: Analysis) -> dict[str, dict[str, np.ndarray]]:
    """Per compute node whose weight loses channels: axis role ("in"/"out") -> its atoms."""
    view = analysis.view
    found: dict[str, dict[str, np.ndarray]] = {}
    prunable = {g.id for g in analysis.prunable_groups}
    for edit in analysis.edits:
        if not isinstance(edit, SliceConstant | SliceGroupedInput) or edit.input_index != 1:
            continue
        groups = analysis.group_of_class[analysis.class_of[edit.atoms.ravel()]]
        if not any(int(g) in prunable for g in np.unique(groups)):
            continue  # a width no plan changes: part of the fixed rest
        node = view.nodes[edit.node]
        weight = view.constant_shape(node.input[1])
        if weight is None or len(weight) < 2 or (node.op_type == "MatMul" and len(weight) != 2):
            continue
        axis = "grouped" if isinstance(edit, SliceGroupedInput) else edit.axis
        role = _role(node, axis)
        if role == "in" and _depthwise(node, weight):
            role = None  # its input channels are its output channels: one axis
        if role is not None:
            found.setdefault(node.name, {}).setdefault(role, edit.atoms.ravel())
    return found


def _depthwise(node: onnx.NodeProto, weight: tuple[int, ...]) -> bool:
    groups = node_attribute(node, "group", 1)
    return node.op_type == "Conv" and groups > 1 and weight[1] == 1


def _role(node: onnx.NodeProto, axis: int | str) -> str | None:
    if node.op_type == "Conv":
        return {0: "out", 1: "in", "grouped": "in"}.get(axis)
    if node.op_type == "ConvTranspose":
        return {0: "in", 1: "out", "grouped": "in"}.get(axis)
    if node.op_type == "MatMul":
        return {0: "in", 1: "out"}.get(axis)
    if node.op_type == "Gemm" and not node_attribute(node, "transA", 0):
        order = ("out", "in") if node_attribute(node, "transB", 0) else ("in", "out")
        return {0: order[0], 1: order[1]}.get(axis)
    return None


@dataclass
class LayerSpec:
    """A compute node with concrete shapes, rebuildable at other widths."""

    node: onnx.NodeProto
    x_shape: list[int]
    w_shape: list[int]
    has_bias: bool
    neighbour: onnx.NodeProto | None
    neighbour_constants: list[onnx.TensorProto]
    output_elements: int

    @classmethod
    def of(cls, view, node: onnx.NodeProto, concrete) -> LayerSpec | None:
        """The layer of `node` at the `concrete` shapes, or None where they are unknown."""
        x, w, out = (
            concrete.get(node.input[0]),
            view.constant_shape(node.input[1]),
            concrete.get(node.output[0]),
        )
        if not (x and w and out and all(isinstance(d, int) for d in [*x, *w, *out])):
            return None
        neighbour, constants = None, []
        consumers = view.consumers(node.output[0])
        if len(consumers) == 1 and consumers[0][0].op_type in _NEIGHBOURS:
            candidate = consumers[0][0]
            values = [view.constant(i) for i in candidate.input[1:] if i]
            if all(v is not None for v in values):
                neighbour = candidate
                constants = [
                    numpy_helper.from_array(np.asarray(v), f"c{i}") for i, v in enumerate(values)
                ]
        return cls(
            node,
            list(x),
            list(w),
            len(node.input) > 2 and bool(node.input[2]),
            neighbour,
            constants,
            math.prod(out),
        )

    @property
    def signature(self) -> str:
        attributes = sorted(helper.printable_attribute(a) for a in self.node.attribute)
        parts = [
            self.node.op_type,
            str(self.x_shape),
            str(self.w_shape),
            str(self.has_bias),
            ";".join(attributes),
        ]
        if self.neighbour is not None:
            parts.append(self.neighbour.op_type)
            parts += sorted(helper.printable_attribute(a) for a in self.neighbour.attribute)
            parts += [t.SerializeToString().hex() for t in self.neighbour_constants]
        return "|".join(parts)

    def channels(self, role: str) -> int:
        """The full width of axis `role` (a grouped conv's input: all of its channels)."""
        if role == "in" and self.node.op_type in ("Conv", "ConvTranspose"):
            return self.x_shape[1]
        return self.w_shape[_weight_axis(self.node, role)]

    def shrunk(self, role: str, width: int | None) -> tuple[list[int], list[int], int]:
        """Input shape, weight shape and group count with axis `role` at `width`."""
        x, w = list(self.x_shape), list(self.w_shape)
        groups = int(node_attribute(self.node, "group", 1))
        op = self.node.op_type
        if width is None:
            return x, w, groups
        if op == "Conv" and groups > 1 and w[1] == 1 and groups == x[1]:
            # Depthwise: input, output and groups shrink together (times the multiplier).
            multiplier = w[0] // groups
            groups = x[1] = max(1, width // multiplier)
            w[0] = groups * multiplier
            return x, w, groups
        if op == "Conv" and groups > 1:  # every conv group alike: a multiple of groups
            width = max(groups, width // groups * groups)
            if role == "out":
                w[0] = width
            else:
                x[1], w[1] = width, width // groups
            return x, w, groups
        axis = _weight_axis(self.node, role)
        w[axis] = width
        if role == "in":
            x[1 if op in ("Conv", "ConvTranspose") else -1] = width
        return x, w, groups

    def model(self, role: str, width: int | None, rng) -> tuple[onnx.ModelProto, np.ndarray]:
        x_shape, w_shape, groups = self.shrunk(role, width)
        # Only the shapes matter for timing: uniform float32 draws cost a quarter of
        # normal float64 ones (building the layers of ResNet-50 took 5.7 s of its profile).
        weight = rng.random(w_shape, dtype=np.float32) - np.float32(0.5)
        initializers = [numpy_helper.from_array(weight, "w")]
        inputs = ["x", "w"]
        if self.has_bias:
            out = w_shape[1] if self.node.op_type == "ConvTranspose" else w_shape[0]
            if self.node.op_type == "ConvTranspose":
                out *= groups
            if self.node.op_type == "Gemm":
                out = w_shape[0] if node_attribute(self.node, "transB", 0) else w_shape[1]
            initializers.append(numpy_helper.from_array(np.zeros(out, np.float32), "b"))
            inputs.append("b")
        attributes = {a.name: helper.get_attribute_value(a) for a in self.node.attribute}
        if "group" in attributes:
            attributes["group"] = groups
        nodes = [helper.make_node(self.node.op_type, inputs, ["y0"], **attributes)]
        last = "y0"
        if self.neighbour is not None:
            extra = {a.name: helper.get_attribute_value(a) for a in self.neighbour.attribute}
            names = [c.name for c in self.neighbour_constants]
            nodes.append(
                helper.make_node(
                    self.neighbour.op_type,
                    ["y0", *names],
                    ["y1"],
                    domain=self.neighbour.domain,
                    **extra,
                )
            )
            initializers += self.neighbour_constants
            last = "y1"
        graph = helper.make_graph(
            nodes,
            "layer",
            [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, x_shape)],
            [helper.make_tensor_value_info(last, onnx.TensorProto.FLOAT, None)],
            initializers,
        )
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
        model.ir_version = 8
        return model, rng.random(x_shape, dtype=np.float32) - np.float32(0.5)


def _weight_axis(node: onnx.NodeProto, role: str) -> int:
    for axis in (0, 1):
        if _role(node, axis) == role:
            return axis
    raise GraphpruneError(f"node '{node.name}' has no {role} axis")
