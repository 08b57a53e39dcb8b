"""Residual blocks: the depth a model can lose by rewiring.

A residual block is an `Add` y = x + f(x) whose branch f(x) is computed from x (x is an
ancestor of the branch input) by nodes that hold weights (a Conv, Gemm or MatMul with a
constant input), with x of y's known shape (x is not broadcast; f(x) may be, as exports
that fixed a batch of 1 inside the branch write it). Dropping the block
makes y := x; the branch's nodes then have no use and go. That is exactly the original
model with f's output zeroed (x + 0 = x), whatever else the branch feeds: nodes of the
branch that something outside it still reads (a mask or a shape computed from x, shared
with later layers) stay, and only the rest goes. A branch that computes a model output (a
KV-cache `present`, an attention map) is not droppable: the model would keep computing
that output for a layer that no longer exists.

Post-norm blocks (BERT: LayerNorm(x + f(x))) keep their norm: y = LayerNorm(x) is what
f zeroed computes. Pre-norm blocks (LLaMA: x + f(norm(x))) lose their norm with f.

Blocks that follow each other along one residual stream (the next block's x is this
block's y, or one op of it such as a post-norm or a ReLU) form a chain. A transformer's
layer is two or three consecutive blocks (attention, MLP); a ResNet's is one: a chain's
*unit* is its shortest period of branch signatures (the counts of weighted ops,
activation-by-activation MatMuls and Softmaxes in each branch), at most `MAX_PERIOD`
blocks, so attention and MLP pair up without naming either. Units are what planning
drops (`unit="branch"` makes every block its own unit).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import networkx as nx

from .channels import Reason
from .graph import SUBGRAPH_READ, GraphView

WEIGHTED_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")
MAX_PERIOD = 4  # residual branches per layer: attention, cross-attention, MLP, spare
UNITS = ("layer", "branch")


@dataclass(frozen=True)
class Block:
    """One residual Add: `residual` is the index of x among its inputs (the branch is the
    other input), `nodes` the branch (descendants of x that feed the branch input, in
    graph order), `owned` those that go when the block goes (nothing outside reads them),
    `axis` the feature axis of y (for per-position similarities), `rank` the branch
    input's rank, `reason` why it may not be dropped (None: droppable)."""

    add: str
    residual: int
    nodes: tuple[str, ...]
    owned: tuple[str, ...]
    axis: int
    rank: int
    reason: Reason | None = None

    @property
    def branch(self) -> int:
        return 1 - self.residual


def find_blocks(view: GraphView) -> list[Block]:
    """Every residual block of the main graph, in graph order."""
    found = []
    for node in view.order:
        if node.op_type != "Add" or len(node.input) != 2 or len(node.output) != 1:
            continue
        block = _block(view, node)
        if block is not None:
            found.append(block)
    return found


def units(view: GraphView, blocks: list[Block], unit: str = "layer") -> list[list[Block]]:
    """Blocks grouped into the units planning drops together, in graph order."""
    if unit == "branch":
        return [[block] for block in blocks]
    by_input: dict[str, Block] = {view.nodes[b.add].input[b.residual]: b for b in blocks}
    following: dict[str, Block] = {}
    for block in blocks:
        for stream in _stream_after(view, view.nodes[block.add].output[0]):
            successor = by_input.get(stream)
            if successor is not None and successor.add != block.add:
                following[block.add] = successor
                break
    preceded = {b.add for b in following.values()}
    found = []
    for block in blocks:
        if block.add in preceded:
            continue
        chain = [block]
        while chain[-1].add in following and len(chain) <= len(blocks):
            chain.append(following[chain[-1].add])
        period = _period([_signature(view, b) for b in chain])
        found += [chain[i : i + period] for i in range(0, len(chain), period)]
    position = view.position
    return sorted(found, key=lambda u: position[u[0].add])


def _block(view: GraphView, add) -> Block | None:
    output = view.shape(add.output[0])
    if output is None or None in output:
        return None
    position = view.position
    for residual in (0, 1):
        x, branch = add.input[residual], add.input[1 - residual]
        if view.shape(x) != output:  # x + 0 must be y itself, not x broadcast
            continue
        source = view.producer(branch)
        if source is None or view.is_constant(branch) or view.is_constant(x):
            continue
        start = view.producer(x)
        if start is not None and position[start.name] >= position[source.name]:
            continue
        nodes = _between(view, x, source, position[add.name])
        if nodes is None or not any(_weighted(view, view.nodes[n]) for n in nodes):
            continue
        ordered = tuple(sorted(nodes, key=position.__getitem__))
        owned, reason = _owned(view, add, ordered)
        branch_shape = view.shape(branch)
        rank = len(output) if branch_shape is None else len(branch_shape)
        axis = _feature_axis(view, ordered, len(output))
        return Block(add.name, residual, ordered, owned, axis, rank, reason)
    return None


def _between(view: GraphView, x: str, source, limit: int) -> set[str] | None:
    """Nodes on a path from x to `source` (included), or None when x does not reach it:
    what x reaches before the Add (at `limit`), and of that, what reaches `source`."""
    position, start = view.position, view.source(x)
    ahead = nx.subgraph_view(
        view.graph,
        filter_node=lambda n: n == start or position.get(n, limit) < limit,
        filter_edge=lambda u, v, key: u != start or key[0] == x,  # x, not its siblings
    )
    reached = nx.descendants(ahead, start)
    if source.name not in reached:
        return None
    return {source.name} | nx.ancestors(view.graph.subgraph(reached), source.name)


def _owned(view: GraphView, add, nodes: tuple[str, ...]) -> tuple[tuple[str, ...], Reason | None]:
    """The branch nodes nothing outside the block reads (directly or through others), and
    the reason the block cannot go when the branch computes a model output."""
    inside = set(nodes)
    outputs = set(view.graph_outputs)
    kept: set[str] = set()
    for name in reversed(nodes):  # consumers come later: reverse order sees them first
        node = view.nodes[name]
        for tensor in node.output:
            if tensor in outputs:
                message = f"its branch computes model output '{tensor}'"
                return (), Reason(message, "Add", add.name)
            for consumer, index in view.consumers(tensor):
                outside = consumer.name not in inside and consumer.name != add.name
                if outside or index == SUBGRAPH_READ or consumer.name in kept:
                    kept.add(name)
    return tuple(n for n in nodes if n not in kept), None


def _weighted(view: GraphView, node) -> bool:
    return node.op_type in WEIGHTED_OPS and any(view.is_constant(n) for n in node.input[:2] if n)


def _feature_axis(view: GraphView, nodes: tuple[str, ...], rank: int) -> int:
    """The axis the branch's last weighted op writes features on: channels (1) for a
    convolution, the last axis for a linear layer."""
    last = next((view.nodes[n] for n in reversed(nodes) if _weighted(view, view.nodes[n])), None)
    conv = last is not None and last.op_type in ("Conv", "ConvTranspose")
    return 1 if conv and rank > 1 else rank - 1


def _signature(view: GraphView, block: Block) -> tuple:
    counts: Counter[str] = Counter()
    for name in block.nodes:
        node = view.nodes[name]
        if node.op_type in WEIGHTED_OPS:
            counts[node.op_type + ("" if _weighted(view, node) else "(activations)")] += 1
        elif node.op_type == "Softmax":
            counts["Softmax"] += 1
    return tuple(sorted(counts.items()))


def _period(signatures: list[tuple]) -> int:
    """The shortest period (at most MAX_PERIOD) that divides the chain and repeats its
    signatures, of distinct signatures within a unit; 1 when there is none."""
    length = len(signatures)
    for period in range(1, min(MAX_PERIOD, length) + 1):
        if length % period:
            continue
        first = signatures[:period]
        if period > 1 and len(set(first)) != period:
            continue
        if all(signatures[i] == signatures[i % period] for i in range(length)):
            return period
    return 1


def _stream_after(view: GraphView, tensor: str) -> list[str]:
    """The tensor and, where one op of a single computed input follows it (a post-norm,
    an activation), that op's output: where the residual stream goes on."""
    streams = [tensor]
    for consumer, _ in view.consumers(tensor):
        computed = [n for n in consumer.input if n and not view.is_constant(n)]
        if computed == [tensor] and len(consumer.output) >= 1:
            streams.append(consumer.output[0])
    return streams
