"""Shape computations shared by consumers that keep different channel counts get one copy
per consumer before the rewrite sets their counts.

Exporters compute a shape once and let every layer read it: torch's dynamo exporter builds
LLaMA's repeat-KV target `Concat(batch, kv_heads, repeat, seq, head_dim)` once, and all K/V
`Expand` nodes of all layers read it. Each consumer's rule asks for the count of *its*
channels in that shared entry (`SetCount` with `Target.path`, the hops from the consumer
down to the stored integer). When the counts agree, one value serves all (the graph stays
as it was); when they differ (a budget that prunes layers unevenly), every consumer that
asked gets its own copy of the nodes on its path, and its edits go to that copy. The
constant itself is then copied by the rewrite (a constant with other uses never changes in
place), so no consumer sees another's count.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections import defaultdict

import numpy as np
import onnx_graphsurgeon as gs

from .channels import Edit, SetCount


def split_shared_targets(
    edits: list[Edit], keep_atom: np.ndarray, nodes: dict[str, gs.Node], home: dict[str, gs.Graph]
) -> tuple[list[Edit], list[gs.Node]]:
    """`edits` with the counts of shared, disagreeing targets moved to per-consumer copies
    (added to the graph and to `nodes`), and the copies; unchanged when no target
    disagrees. A consumer that keeps every channel disagrees too (its count stays the
    original): it keeps the original computation, the others get copies. The copies read
    the same constants as their originals: the rewrite counts those uses, so that no
    copy's count is written into a constant another one reads."""
    counts: dict[tuple, set[int]] = defaultdict(set)
    for edit in edits:
        if isinstance(edit, SetCount) and edit.target.input_index is not None:
            key = (edit.target.node, edit.target.input_index, edit.target.entry)
            counts[key].add(int(keep_atom[edit.atoms].sum()))
    shared = {key[0] for key, values in counts.items() if len(values) > 1}
    if not shared:
        return edits, []
    copies: dict[str, dict[str, gs.Node]] = defaultdict(dict)  # consumer -> original -> copy
    result = []
    for edit in edits:
        if not (isinstance(edit, SetCount) and edit.target.node in shared and edit.target.path):
            result.append(edit)
            continue
        if keep_atom[edit.atoms].all():
            continue  # nothing to write: the original computation serves it
        head = edit.target.path[0][0]
        chain = [*edit.target.path, (edit.target.node, -1)]
        for (consumer, index), (producer, _) in itertools.pairwise(chain):
            reader = nodes[consumer] if consumer == head else copies[head][consumer]
            if producer not in copies[head]:
                copies[head][producer] = _copy(nodes[producer], head, home[head], nodes)
            copy = copies[head][producer]
            original = reader.inputs[index]
            position = [t.name for t in nodes[producer].outputs].index(original.name)
            reader.inputs[index] = copy.outputs[position]
        target = dataclasses.replace(edit.target, node=copies[head][edit.target.node].name, path=())
        result.append(dataclasses.replace(edit, target=target))
    return result, [copy for mine in copies.values() for copy in mine.values()]


def _copy(node: gs.Node, consumer: str, graph: gs.Graph, nodes: dict[str, gs.Node]) -> gs.Node:
    """A copy of `node` for `consumer` alone: same inputs and attributes, new outputs."""
    name = f"{node.name}__for_{consumer}"
    outputs = [
        gs.Variable(f"{tensor.name}__for_{consumer}", dtype=tensor.dtype, shape=tensor.shape)
        for tensor in node.outputs
    ]
    copy = gs.Node(node.op, name, dict(node.attrs), list(node.inputs), outputs, domain=node.domain)
    graph.nodes.append(copy)
    nodes[name] = copy
    return copy
