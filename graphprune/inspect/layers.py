"""Per-layer facts of one model: op, channels, weight shapes, params, MACs, attributes.

`graphprune diff` compares these facts between two models and the HTML report charts
them, so they are plain JSON-ready values computed once per node. Channel counts come from
the weights where the op defines them exactly (Conv, ConvTranspose, Gemm, MatMul with a
constant operand, normalizations); other ops report their tensor shapes instead, because
a "channel axis" is a guess there.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import cache

import numpy as np
import onnx

from ..core.graph import GraphView
from ..core.metrics import count_params, node_macs
from ..io.external import to_array
from ..io.protos import graph_inputs, node_attribute, opset_version
from ..io.protos import is_float as is_float_type
from ..io.shapes import Shape, infer_shapes
from ..runtime.inputs import input_shapes as concrete_input_shapes

_INT_TYPES = {onnx.TensorProto.INT64, onnx.TensorProto.INT32}
_SMALL_VALUE = 16  # integer constants up to this size are shown with their values
_NORMS = {
    "BatchNormalization", "InstanceNormalization", "GroupNormalization",
    "LayerNormalization", "RMSNormalization",
}  # fmt: skip


@dataclass
class Layer:
    """What one node of a model looks like: the unit `graphprune diff` compares."""

    index: int
    name: str
    op: str
    domain: str
    inputs: list[str]
    outputs: list[str]
    weights: list[dict]  # {"input": i, "name": storage, "shape": [...]}, constant inputs
    in_channels: int | None
    out_channels: int | None
    input_shape: list | None
    output_shapes: list[list | None]
    params: int
    macs: int
    attributes: dict = field(default_factory=dict)

    def facts(self) -> dict:
        """The comparable part, without names (renaming is not a structural change)."""
        return {
            "in_channels": self.in_channels,
            "out_channels": self.out_channels,
            "weights": [{k: v for k, v in w.items() if k != "name"} for w in self.weights],
            "input_shape": self.input_shape,
            "output_shapes": self.output_shapes,
            "params": self.params,
            "macs": self.macs,
            "attributes": self.attributes,
        }

    def to_json(self) -> dict:
        return {
            "name": self.name,
            "op": self.op if not self.domain else f"{self.domain}.{self.op}",
            **self.facts(),
            "weights": self.weights,
        }


@dataclass
class ModelLayers:
    """Every node's `Layer`, in file order, plus what matching needs to walk the graph."""

    model: onnx.ModelProto
    layers: list[Layer]
    producer: dict[str, tuple[int, int]]  # tensor -> (layer index, output index)
    constants: set[str]  # tensors whose value is known without running the model
    graph_inputs: list[str]
    graph_outputs: list[str]
    input_shapes: dict[str, tuple[int, ...]]
    params: int


def describe(
    model: onnx.ModelProto, shapes_given: dict[str, tuple[int, ...]] | None = None
) -> ModelLayers:
    """Facts of every node, with MACs for concrete input shapes (symbolic batch -> 1, as in
    `graphprune prune`), using one shape inference for the whole model."""
    graph = model.graph
    given = concrete_input_shapes(model, shapes_given)
    shapes = infer_shapes(model, given)
    storage = _constant_storage(model)
    producer: dict[str, tuple[int, int]] = {}
    opset = opset_version(model)
    layers = []
    # Constant nodes are weights, not layers: they appear in their consumers' weights (and
    # the rewrite turns edited ones into initializers, which is no structural change).
    for node in graph.node:
        if node.op_type == "Constant":
            continue
        index = len(layers)
        for slot, name in enumerate(node.output):
            if name:
                producer[name] = (index, slot)
        layers.append(_layer(index, node, shapes, storage, opset))
    return ModelLayers(
        model=model,
        layers=layers,
        producer=producer,
        constants=set(storage),
        graph_inputs=[info.name for info in graph_inputs(model)],
        graph_outputs=[o.name for o in graph.output],
        input_shapes=given,
        params=count_params(model),
    )


def _constant_storage(model: onnx.ModelProto) -> dict[str, tuple]:
    """tensor -> (storage name, shape, is float, small integer value or None) for every
    constant the graph reads (`GraphView.storage`: initializers, Constant outputs, Identity
    chains of those). Small integer values are kept because pruning edits them (Reshape
    targets, Split sizes, Slice bounds) without changing their shape."""
    view = GraphView(model, shapes=False)
    found: dict[str, tuple] = {}
    names = {t.name for t in model.graph.initializer}
    names |= {name for node in model.graph.node for name in [*node.input, *node.output] if name}
    for name in sorted(names):
        storage = view.storage(name)
        if storage is None:
            continue
        shape, data_type = view.constant_shape(storage), view.constant_type(storage)
        if shape is None or data_type is None:  # a sparse or string Constant
            found[name] = (storage, [], False, None)
        else:
            found[name] = _stored(storage, shape, data_type, lambda s=storage: view.constant(s))
    return found


def _stored(name: str, dims, data_type: int, read) -> tuple:
    dims = [int(d) for d in dims]
    is_float = is_float_type(data_type)
    small = None
    if not is_float and math.prod(dims) <= _SMALL_VALUE and data_type in _INT_TYPES:
        small = [int(v) for v in np.asarray(read()).reshape(-1)]
    return (name, dims, is_float, small)


def _layer(index: int, node: onnx.NodeProto, shapes: dict, storage: dict, opset: int) -> Layer:
    weights, params = [], 0
    for slot, name in enumerate(node.input):
        if name in storage and node.op_type != "Identity":
            stored, dims, is_float, small = storage[name]
            weight = {"input": slot, "name": stored, "shape": dims}
            if small is not None:
                weight["value"] = small
            weights.append(weight)
            params += math.prod(dims) if is_float else 0
    in_ch, out_ch = _channels(node, {w["input"]: w["shape"] for w in weights}, shapes)
    first = shapes.get(node.input[0]) if node.input and node.input[0] else None
    return Layer(
        index=index,
        name=node.name,
        op=node.op_type,
        domain=node.domain,
        inputs=list(node.input),
        outputs=list(node.output),
        weights=weights,
        in_channels=in_ch,
        out_channels=out_ch,
        input_shape=_json_shape(first),
        output_shapes=[_json_shape(shapes.get(o)) if o else None for o in node.output],
        params=int(params),
        macs=node_macs(node, shapes),
        attributes={
            a.name: _attribute_value(a)
            for a in sorted(node.attribute, key=_name)
            if not _is_default(node, a, opset)
        },
    )


def _name(attribute: onnx.AttributeProto) -> str:
    return attribute.name


def _is_default(node: onnx.NodeProto, attribute: onnx.AttributeProto, opset: int) -> bool:
    """Whether an attribute states its default (exporters differ in writing defaults out,
    which is no difference between two models)."""
    if attribute.name in ("strides", "dilations") and attribute.type == onnx.AttributeProto.INTS:
        return all(v == 1 for v in attribute.ints)
    default = _schema_default(node.op_type, node.domain, opset, attribute.name)
    if default is None or attribute.type != default[0]:
        return False
    return onnx.helper.get_attribute_value(attribute) == default[1]


@cache
def _schema_default(op: str, domain: str, opset: int, name: str) -> tuple | None:
    """(attribute type, default value) from the op's schema, None when it has none."""
    try:
        schema = onnx.defs.get_schema(op, max_inclusive_version=opset, domain=domain)
    except onnx.defs.SchemaError:
        return None
    found = schema.attributes.get(name)
    if found is None or not found.default_value.name:
        return None
    return found.default_value.type, onnx.helper.get_attribute_value(found.default_value)


def _channels(
    node: onnx.NodeProto, weights: dict[int, list[int]], shapes: dict
) -> tuple[int | None, int | None]:
    """(input channels, output channels) where the op states them exactly."""
    op = node.op_type
    w = weights.get(1)
    if op in ("Conv", "ConvTranspose") and w and len(w) >= 2:
        group = int(node_attribute(node, "group", 1))
        return (w[1] * group, w[0]) if op == "Conv" else (w[0], w[1] * group)
    if op == "Gemm" and w and len(w) == 2:
        k, n = (w[1], w[0]) if node_attribute(node, "transB", 0) else (w[0], w[1])
        return k, n
    if op == "MatMul" and w and len(w) >= 2:
        return w[-2], w[-1]
    if op in _NORMS:
        scale = weights.get(1)
        if scale and op in ("BatchNormalization", "InstanceNormalization"):
            return scale[0], scale[0]
        x = shapes.get(node.input[0]) if node.input else None
        if op == "GroupNormalization" and x and len(x) >= 2 and isinstance(x[1], int):
            return x[1], x[1]
        if scale and len(scale) == 1:
            return scale[0], scale[0]
    return None, None


def _json_shape(shape: Shape | None) -> list | None:
    return None if shape is None else list(shape)


def _attribute_value(attribute: onnx.AttributeProto):
    """A JSON value for an attribute; tensors and graphs are summarised, not dumped."""
    kind = attribute.type
    if kind == onnx.AttributeProto.TENSOR:
        return _tensor_summary(attribute.t)
    if kind == onnx.AttributeProto.TENSORS:
        return [_tensor_summary(t) for t in attribute.tensors]
    if kind in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS):
        graphs = [attribute.g] if kind == onnx.AttributeProto.GRAPH else list(attribute.graphs)
        return [f"<graph of {len(g.node)} nodes>" for g in graphs]
    if kind in (onnx.AttributeProto.SPARSE_TENSOR, onnx.AttributeProto.SPARSE_TENSORS):
        return "<sparse tensor>"
    if kind == onnx.AttributeProto.TYPE_PROTO:
        return "<type>"
    value = onnx.helper.get_attribute_value(attribute)
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, list):
        return [v.decode("utf-8", "replace") if isinstance(v, bytes) else v for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


def _tensor_summary(tensor: onnx.TensorProto) -> str:
    dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type)).name
    small = _stored("", tensor.dims, tensor.data_type, lambda: to_array(tensor))[3]
    return f"{dtype}{list(tensor.dims)}" + ("" if small is None else f"={small}")
