"""A networkx view of an ONNX graph: op and tensor vertices, producers, consumers, shapes
and constant values.

The view is bipartite: an edge tensor -> op carries the input index, an edge op -> tensor
the output index. Constants are tensors whose value is known without running the model:
initializers, `Constant` node outputs, and `Identity` of a constant (Paddle and tf2onnx
exports route weights through those).
"""

from __future__ import annotations

from functools import cached_property

import networkx as nx
import numpy as np
import onnx
from onnx import numpy_helper

from .loading import Shape, infer_shapes, opset_version

OP = "op"
TENSOR = "tensor"


class GraphView:
    """Read-only analysis view of a ModelProto's main graph."""

    def __init__(self, model: onnx.ModelProto) -> None:
        self.model = model
        self.opset = opset_version(model)
        graph = model.graph
        self.nodes: dict[str, onnx.NodeProto] = {node.name: node for node in graph.node}
        self.initializers = {tensor.name: tensor for tensor in graph.initializer}
        self.graph_inputs = [i.name for i in graph.input if i.name not in self.initializers]
        self.graph_outputs = [o.name for o in graph.output]
        self.shapes: dict[str, Shape] = infer_shapes(model)
        self.nx = self._build_nx()
        self._constants: dict[str, np.ndarray | None] = {}

    def _build_nx(self) -> nx.DiGraph:
        g = nx.DiGraph()
        for node in self.model.graph.node:
            g.add_node((OP, node.name), op_type=node.op_type, domain=node.domain)
            for index, name in enumerate(node.input):
                if name:
                    g.add_node((TENSOR, name))
                    g.add_edge((TENSOR, name), (OP, node.name), index=index)
            # Tensors a subgraph reads from the outer scope are inputs of the node too:
            # whatever flows into an If or Loop body must be seen by the analysis.
            for name in sorted(outer_scope_reads(node)):
                g.add_node((TENSOR, name))
                if not g.has_edge((TENSOR, name), (OP, node.name)):
                    g.add_edge((TENSOR, name), (OP, node.name), index=-1)
            for index, name in enumerate(node.output):
                if name:
                    g.add_node((TENSOR, name))
                    g.add_edge((OP, node.name), (TENSOR, name), index=index)
        return g

    @cached_property
    def order(self) -> list[onnx.NodeProto]:
        """Nodes in a deterministic topological order (the file's order where valid)."""
        if self._file_order_is_topological():
            return list(self.model.graph.node)
        position = {name: i for i, name in enumerate(self.nodes)}
        ops = nx.lexicographical_topological_sort(self.nx, key=lambda v: _sort_key(v, position))
        return [self.nodes[name] for kind, name in ops if kind == OP]

    def _file_order_is_topological(self) -> bool:
        available = set(self.graph_inputs) | set(self.initializers) | {""}
        for node in self.model.graph.node:
            needed = set(node.input) | outer_scope_reads(node)
            if not needed <= available:
                return False
            available.update(node.output)
        return True

    def producer(self, tensor: str) -> onnx.NodeProto | None:
        for op in self.nx.predecessors((TENSOR, tensor)):
            return self.nodes[op[1]]
        return None

    def consumers(self, tensor: str) -> list[tuple[onnx.NodeProto, int]]:
        """(node, input index) for every use of the tensor; index -1 for subgraph reads."""
        if (TENSOR, tensor) not in self.nx:
            return []
        uses = [
            (self.nodes[op[1]], data["index"])
            for _, op, data in self.nx.out_edges((TENSOR, tensor), data=True)
        ]
        return sorted(uses, key=lambda use: (self.position[use[0].name], use[1]))

    @cached_property
    def position(self) -> dict[str, int]:
        return {node.name: i for i, node in enumerate(self.order)}

    def shape(self, tensor: str) -> Shape | None:
        return self.shapes.get(tensor)

    def constant_shape(self, tensor: str) -> tuple[int, ...] | None:
        """The shape of a constant without decoding its values (None if not constant)."""
        name = self.storage(tensor)
        if name is None:
            return None
        if name in self.initializers:
            return tuple(int(d) for d in self.initializers[name].dims)
        value = self.constant(name)
        return None if value is None else value.shape

    def constant(self, tensor: str) -> np.ndarray | None:
        """The value of a tensor known without running the model, else None."""
        if tensor not in self._constants:
            self._constants[tensor] = self._resolve_constant(tensor)
        return self._constants[tensor]

    def storage(self, tensor: str) -> str | None:
        """The initializer or Constant output that holds a constant's value."""
        seen = 0
        while seen < 64:
            if tensor in self.initializers:
                return tensor
            node = self.producer(tensor)
            if node is None:
                return None
            if node.op_type == "Constant":
                return tensor
            if node.op_type != "Identity":
                return None
            tensor = node.input[0]
            seen += 1
        return None

    def _resolve_constant(self, tensor: str) -> np.ndarray | None:
        name = self.storage(tensor)
        if name is None:
            return None
        if name in self.initializers:
            return numpy_helper.to_array(self.initializers[name])
        node = self.producer(name)
        assert node is not None
        return _constant_node_value(node)

    def is_constant(self, tensor: str) -> bool:
        return self.storage(tensor) is not None

    def attribute(self, node: onnx.NodeProto, name: str, default=None):
        return node_attribute(node, name, default)

    def input(self, node: onnx.NodeProto, index: int) -> str | None:
        """The node's index-th input name, None when absent or omitted."""
        if index < len(node.input) and node.input[index]:
            return node.input[index]
        return None

    def int_list(
        self, node: onnx.NodeProto, input_index: int | None, attribute: str | None
    ) -> list[int] | None:
        """An integer list given as a constant input (newer opsets) or an attribute."""
        name = None if input_index is None else self.input(node, input_index)
        if name is not None:
            value = self.constant(name)
            return None if value is None else [int(v) for v in np.asarray(value).reshape(-1)]
        value = None if attribute is None else self.attribute(node, attribute)
        return None if value is None else [int(v) for v in np.atleast_1d(value)]


def node_attribute(node: onnx.NodeProto, name: str, default=None):
    for attribute in node.attribute:
        if attribute.name == name:
            return onnx.helper.get_attribute_value(attribute)
    return default


def _sort_key(vertex: tuple[str, str], position: dict[str, int]) -> tuple[int, str]:
    kind, name = vertex
    return (position.get(name, -1) if kind == OP else -1, name)


def _constant_node_value(node: onnx.NodeProto) -> np.ndarray | None:
    for attribute in node.attribute:
        if attribute.name == "value":
            return numpy_helper.to_array(attribute.t)
        if attribute.name == "value_float":
            return np.array(attribute.f, dtype=np.float32)
        if attribute.name == "value_floats":
            return np.array(list(attribute.floats), dtype=np.float32)
        if attribute.name == "value_int":
            return np.array(attribute.i, dtype=np.int64)
        if attribute.name == "value_ints":
            return np.array(list(attribute.ints), dtype=np.int64)
    return None


def outer_scope_reads(node: onnx.NodeProto) -> set[str]:
    reads: set[str] = set()
    for attribute in node.attribute:
        subgraphs = list(attribute.graphs)
        if attribute.HasField("g"):
            subgraphs.append(attribute.g)
        for subgraph in subgraphs:
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
