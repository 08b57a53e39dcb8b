"""Small facts about ONNX protos that every stage needs, stated once.

Nothing here knows about channels or pruning: element types, attribute and Constant
decoding, the graph inputs that are real inputs, names read from subgraphs, fresh names.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator

import numpy as np
import onnx
from onnx import numpy_helper

# Protobuf refuses to serialize a message of 2 GB; models above this keep external data.
PROTOBUF_LIMIT = 2**31 - 2**20

FLOAT_TYPES = frozenset({
    onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16,
    onnx.TensorProto.DOUBLE,
})  # fmt: skip


def is_float(data_type: int) -> bool:
    """Whether an element type holds parameters (floating point), not indices or shapes."""
    return data_type in FLOAT_TYPES


def element_count(dims: Iterable[int]) -> int:
    return int(math.prod(int(d) for d in dims))


# Element types packed below a byte (onnx packs them densely in raw_data); 6-bit types are
# left out: their size is not checked.
_PACKED_BITS = {
    getattr(onnx.TensorProto, name): bits
    for name, bits in (("UINT4", 4), ("INT4", 4), ("FLOAT4E2M1", 4), ("UINT2", 2), ("INT2", 2))
    if hasattr(onnx.TensorProto, name)
}
_UNSIZED = {onnx.TensorProto.STRING, getattr(onnx.TensorProto, "FLOAT6E2M3", -1),
            getattr(onnx.TensorProto, "FLOAT6E3M2", -1)}  # fmt: skip


def known_type(data_type: int) -> bool:
    """Whether numpy (through onnx) has a dtype for an ONNX element type (not UNDEFINED)."""
    try:
        onnx.helper.tensor_dtype_to_np_dtype(data_type)
    except (KeyError, ValueError, TypeError):
        return False
    return True


def byte_size(data_type: int, count: int) -> int | None:
    """The bytes `count` elements take in raw_data or external data (None: not fixed)."""
    if data_type in _UNSIZED or not known_type(data_type):
        return None
    if data_type in _PACKED_BITS:
        return math.ceil(count * _PACKED_BITS[data_type] / 8)
    return count * onnx.helper.tensor_dtype_to_np_dtype(data_type).itemsize


def all_tensors(graph: onnx.GraphProto) -> Iterator[onnx.TensorProto]:
    """The initializers and attribute tensors of a graph and of all its subgraphs."""
    yield from graph.initializer
    for node in graph.node:
        for attribute in node.attribute:
            if attribute.HasField("t"):
                yield attribute.t
            yield from attribute.tensors
            if attribute.HasField("g"):
                yield from all_tensors(attribute.g)
            for subgraph in attribute.graphs:
                yield from all_tensors(subgraph)


def opset_version(model: onnx.ModelProto) -> int:
    """The default domain's opset (1 when the model does not import it)."""
    for opset in model.opset_import:
        if opset.domain in ("", "ai.onnx"):
            return int(opset.version)
    return 1


def graph_inputs(model: onnx.ModelProto) -> list[onnx.ValueInfoProto]:
    """The inputs a caller feeds: graph inputs that are not initializers (older exporters
    list every initializer as an input too)."""
    initializers = {t.name for t in model.graph.initializer}
    return [info for info in model.graph.input if info.name not in initializers]


def input_dtype(info: onnx.ValueInfoProto) -> np.dtype:
    return np.dtype(onnx.helper.tensor_dtype_to_np_dtype(info.type.tensor_type.elem_type))


def node_attribute(node: onnx.NodeProto, name: str, default=None):
    for attribute in node.attribute:
        if attribute.name == name:
            return onnx.helper.get_attribute_value(attribute)
    return default


def constant_value(node: onnx.NodeProto, max_elements: int | None = None) -> np.ndarray | None:
    """The value of a `Constant` node (every attribute form), None for sparse or string
    values and for tensors over `max_elements`."""
    for attribute in node.attribute:
        if attribute.name == "value":
            if max_elements is not None and element_count(attribute.t.dims) > max_elements:
                return None
            return numpy_helper.to_array(attribute.t)
        if attribute.name in ("value_float", "value_floats"):
            return np.array(onnx.helper.get_attribute_value(attribute), dtype=np.float32)
        if attribute.name in ("value_int", "value_ints"):
            return np.array(onnx.helper.get_attribute_value(attribute), dtype=np.int64)
    return None


def has_subgraphs(node: onnx.NodeProto) -> bool:
    return any(
        a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for a in node.attribute
    )


def subgraphs(node: onnx.NodeProto) -> list[onnx.GraphProto]:
    """The node's subgraphs: If branches, Loop and Scan bodies."""
    found = []
    for attribute in node.attribute:
        found.extend(attribute.graphs)
        if attribute.HasField("g"):
            found.append(attribute.g)
    return found


def all_graphs(graph: onnx.GraphProto) -> Iterator[onnx.GraphProto]:
    """`graph` and every subgraph nested in it."""
    yield graph
    for node in graph.node:
        for subgraph in subgraphs(node):
            yield from all_graphs(subgraph)


def outer_scope_reads(node: onnx.NodeProto) -> set[str]:
    """Names the node's subgraphs (If branches, Loop and Scan bodies) read from the
    enclosing scope: inputs of the node in all but name."""
    reads: set[str] = set()
    for subgraph in subgraphs(node):
        reads |= _free_names(subgraph)
    return reads


def _free_names(graph: onnx.GraphProto) -> set[str]:
    defined = {i.name for i in graph.input} | {t.name for t in graph.initializer}
    free: set[str] = set()
    for node in graph.node:
        free |= {name for name in node.input if name and name not in defined}
        free |= outer_scope_reads(node) - defined
        defined |= set(node.output)
    return free


def unique_name(base: str, taken: set[str], separator: str = "_") -> str:
    """`base`, or `base<separator><n>` with the smallest n >= 1 not in `taken`; the name
    is added to `taken`."""
    name, suffix = base, 0
    while name in taken:
        suffix += 1
        name = f"{base}{separator}{suffix}"
    taken.add(name)
    return name
