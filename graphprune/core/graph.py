"""The one read model of an ONNX graph that every stage uses: nodes by name, producers and
consumers of every tensor, a deterministic topological order, shapes, and constants.

The structure is a `networkx.MultiDiGraph` (`GraphView.graph`): its nodes are the ONNX
nodes (by name, subgraphs' too) and the values no node produces (graph inputs,
initializers, subgraph inputs: `value_node(name)`); each edge is one read of a tensor,
from the node that makes it to the node that reads it, keyed `(tensor, input index)`
with the producer's output index as `output`. Order, cycles and reachability are
networkx's (`lexicographical_topological_sort`, `find_cycle`, `descendants`).

Constants are tensors whose value is known without running the model: initializers,
`Constant` node outputs, and `Identity` of a constant (Paddle and tf2onnx route weights
through those); `storage` names where such a value lives. Subgraphs (If branches, Loop
and Scan bodies) read outer-scope tensors by name: those reads are consumers too, with
input index -1, so nothing that flows into a subgraph goes unseen. Weight values are
decoded only when asked for; only small ones (shape and index constants, which rules read
again and again) are cached, so no stage holds a second copy of the weights.

Writers are separate: folding edits the proto while loading, the rewrite builds a new
graph with onnx-graphsurgeon from the edits, compensation writes new weights.
"""

from __future__ import annotations

from functools import cached_property

import networkx as nx
import numpy as np
import onnx

from ..errors import GraphpruneError
from ..io.external import to_array
from ..io.protos import (
    all_graphs,
    constant_value,
    graph_inputs,
    has_subgraphs,
    node_attribute,
    opset_version,
    outer_scope_reads,
    subgraphs,
)
from ..io.shapes import Shape, infer_shapes

SUBGRAPH_READ = -1  # the input index of a tensor a node's subgraph reads by name
_MAX_IDENTITY_CHAIN = 64
_CACHED_ELEMENTS = 4096

ValueNode = tuple[str, str]


def value_node(tensor: str) -> ValueNode:
    """The graph node of a value no node produces (a graph input, an initializer, a
    subgraph input); a tuple, so it never meets an ONNX node's name."""
    return ("value", tensor)


class GraphView:
    """Read-only view of a ModelProto's main graph (`shapes=False` skips shape inference,
    for stages that need structure only)."""

    def __init__(self, model: onnx.ModelProto, *, shapes: bool = True) -> None:
        self.model = model
        self.opset = opset_version(model)
        graph = model.graph
        scopes = list(all_graphs(graph))
        # Node names are unique across subgraphs too (loading makes them so): body nodes
        # are found, and produce and consume, like the main graph's.
        self.nodes: dict[str, onnx.NodeProto] = {n.name: n for g in scopes for n in g.node}
        self.initializers = {t.name: t for g in scopes for t in g.initializer}
        self.graph_inputs = [info.name for info in graph_inputs(model)]
        self.graph_outputs = [o.name for o in graph.output]
        self.shapes: dict[str, Shape] = infer_shapes(model) if shapes else {}
        self._small: dict[str, np.ndarray | None] = {}
        self.body_names_clash = _body_names_clash(scopes)
        # Where each tensor comes from: (node, output index) of its producer.
        self._producer: dict[str, tuple[onnx.NodeProto, int]] = {
            name: (node, index)
            for node in self.nodes.values()
            for index, name in enumerate(node.output)
            if name
        }
        self.graph = self._build_graph()

    def _build_graph(self) -> nx.MultiDiGraph:
        graph = nx.MultiDiGraph()
        graph.add_nodes_from(self.nodes)
        graph.add_nodes_from(value_node(name) for name in [*self.graph_inputs, *self.initializers])
        producer, edges = self._producer, []
        for reader, node in self.nodes.items():
            reads = [(name, index) for index, name in enumerate(node.input) if name]
            if has_subgraphs(node):
                direct = set(node.input)
                outer = sorted(outer_scope_reads(node) - direct)
                reads += [(name, SUBGRAPH_READ) for name in outer]
            for name, index in reads:
                made = producer.get(name)
                if made is None:
                    edges.append((value_node(name), reader, (name, index), {"output": -1}))
                else:
                    edges.append((made[0].name, reader, (name, index), {"output": made[1]}))
        graph.add_edges_from(edges)
        return graph

    @cached_property
    def order(self) -> list[onnx.NodeProto]:
        """Nodes in a deterministic topological order: the file's order where it is one,
        else the lexicographic topological order that takes the earliest ready node in
        file order (values first, subgraph nodes last: they make nothing the main graph
        reads). A cycle is a one-line error that names it."""
        nodes = list(self.model.graph.node)
        if self._file_order_is_topological():  # most files: no sort (it is n log n)
            return nodes
        position = {node.name: i for i, node in enumerate(nodes)}
        last = len(nodes)

        def key(vertex) -> int:
            return -1 if isinstance(vertex, tuple) else position.get(vertex, last)

        try:
            ordered = list(nx.lexicographical_topological_sort(self.graph, key=key))
        except nx.NetworkXUnfeasible:
            raise GraphpruneError(f"the graph has a cycle: {_cycle(self.graph)}") from None
        found = [self.nodes[name] for name in ordered if name in position]
        if len(found) != len(nodes):  # only a model that was not loaded can have them
            raise GraphpruneError("the graph's node names are not unique")
        return found

    def _file_order_is_topological(self) -> bool:
        available = set(self.graph_inputs) | set(self.initializers) | {""}
        for node in self.model.graph.node:
            if not _reads(node) <= available:
                return False
            available.update(node.output)
        return True

    @cached_property
    def position(self) -> dict[str, int]:
        """Each node's index in `order`, body nodes right after the node that holds them."""
        flat: list[onnx.NodeProto] = []
        for node in self.order:
            flat.append(node)
            flat.extend(n for body in subgraphs(node) for g in all_graphs(body) for n in g.node)
        return {node.name: i for i, node in enumerate(flat)}

    def producer(self, tensor: str) -> onnx.NodeProto | None:
        found = self._producer.get(tensor)
        return None if found is None else found[0]

    def source(self, tensor: str) -> str | ValueNode:
        """The graph node a tensor comes from: its producer, else its value node."""
        found = self._producer.get(tensor)
        return value_node(tensor) if found is None else found[0].name

    def consumers(self, tensor: str) -> list[tuple[onnx.NodeProto, int]]:
        """(node, input index) for every use of the tensor, in topological order; index
        SUBGRAPH_READ (-1) where a subgraph of the node reads it."""
        source = self.source(tensor)
        if source not in self.graph:
            return []
        uses = [
            (self.nodes[reader], index)
            for reader, keys in self.graph.succ[source].items()
            for name, index in keys
            if name == tensor
        ]
        return sorted(uses, key=lambda use: (self.position[use[0].name], use[1]))

    def shape(self, tensor: str) -> Shape | None:
        return self.shapes.get(tensor)

    def storage(self, tensor: str) -> str | None:
        """The initializer or Constant output that holds a constant's value."""
        for _ in range(_MAX_IDENTITY_CHAIN):
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
        return None

    def is_constant(self, tensor: str) -> bool:
        return self.storage(tensor) is not None

    def constant_shape(self, tensor: str) -> tuple[int, ...] | None:
        """The shape of a constant without decoding its values (None if not constant)."""
        name = self.storage(tensor)
        if name is None:
            return None
        if name in self.initializers:
            return tuple(int(d) for d in self.initializers[name].dims)
        value = self.constant(name)
        return None if value is None else value.shape

    def constant_type(self, tensor: str) -> int | None:
        """The ONNX element type of a constant (None if not constant)."""
        name = self.storage(tensor)
        if name is None:
            return None
        if name in self.initializers:
            return int(self.initializers[name].data_type)
        value = self.constant(name)
        return None if value is None else onnx.helper.np_dtype_to_tensor_dtype(value.dtype)

    def constant(self, tensor: str) -> np.ndarray | None:
        """The value of a tensor known without running the model, else None. Callers must
        not modify it (small values are shared)."""
        name = self.storage(tensor)
        if name is None:
            return None
        if name in self._small:
            return self._small[name]
        if name in self.initializers:
            value = to_array(self.initializers[name])  # weights on disk: mapped
        else:
            node = self.producer(name)
            assert node is not None
            value = constant_value(node)
        if value is None or value.size <= _CACHED_ELEMENTS:
            self._small[name] = value
        return value

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


def _body_names_clash(scopes: list[onnx.GraphProto]) -> bool:
    """Whether two graphs define one tensor name (sibling branches may, in ONNX): layouts
    are kept by name, so such bodies cannot be analyzed."""
    seen: set[str] = set()
    for scope in scopes:
        names = {i.name for i in scope.input} | {t.name for t in scope.initializer}
        names |= {o for n in scope.node for o in n.output if o}
        if names & seen:
            return True
        seen |= names
    return False


def _cycle(graph: nx.MultiDiGraph, shown: int = 6) -> str:
    """'a' -> 'b' -> 'a': the nodes of one cycle, the first few of a long one."""
    cycle = [u for u, _, _ in nx.find_cycle(graph)]
    names = [repr(name) for name in cycle[:shown]]
    if len(cycle) > shown:
        names.append(f"... ({len(cycle)} nodes)")
    return " -> ".join([*names, repr(cycle[0])])


def _reads(node: onnx.NodeProto) -> set[str]:
    return {name for name in node.input if name} | outer_scope_reads(node)
