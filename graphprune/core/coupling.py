"""The coupling graph: why channels must go together, as a `networkx.MultiGraph`.

A node owns channels: a node of the model that makes them (a Conv's, Gemm's or
embedding's outputs; a residual Add when blocks are analyzed), keyed by its name, or one
untracked position that nothing may remove (a Concat input no rule follows), keyed by its
atom (an int). An edge is one coupling statement between two owners (a self-loop when it
couples distinct positions of one owner: attention heads): `rule`
("elementwise.broadcast"), `op` and `node` say which rule said so, at which node, and
`positions` how many position pairs it joined (a position coupled with itself is none).

The groups of `analyze` are this graph's connected components that own channels of some
node: `components` orders them as group ids are numbered (by the graph position of each
component's first owner). Channels themselves (classes) are the connected components of
the coupled positions (`analysis._components`, scipy on a sparse matrix): a networkx
graph with a node per position took 2.5x the whole analysis of MiniLM (21888 positions)
where scipy takes about a millisecond.
"""

from __future__ import annotations

import bisect
import json
from pathlib import PurePath

import networkx as nx
import numpy as np

from ..errors import GraphpruneError
from .graph import GraphView
from .rules import Recorder

GRAPH_FORMATS = (".graphml", ".json")


def coupling_graph(view: GraphView, recorder: Recorder, atom_owner: np.ndarray) -> nx.MultiGraph:
    """The owners of channels and the coupling statements between them. `atom_owner` is
    each atom's source index, -1 for untracked positions."""
    graph = nx.MultiGraph()
    for name, atoms in recorder.source_atoms.items():
        op = view.nodes[name].op_type
        graph.add_node(name, op=op, channels=int(atoms.size), node=name, untracked=False)
    couplings = recorder.couplings
    if not couplings:
        return graph
    sources = len(recorder.sources)
    # Owner ids: source index, or sources + atom for an untracked position.
    owner = np.where(atom_owner >= 0, atom_owner, sources + np.arange(atom_owner.size))
    first = np.concatenate([c.first for c in couplings])
    second = np.concatenate([c.second for c in couplings])
    statement = np.repeat(np.arange(len(couplings)), [c.first.size for c in couplings])
    # A position coupled with itself (x * f(x)) says nothing: no edge.
    other = first != second
    first, second, statement = owner[first[other]], owner[second[other]], statement[other]
    if not statement.size:
        return graph
    # One edge per (statement, pair of owners): sort, keep where either changes.
    low, high = np.minimum(first, second), np.maximum(first, second)
    pair = low * (sources + owner.size) + high
    order = np.lexsort((pair, statement))
    statement, low, high, pair = statement[order], low[order], high[order], pair[order]
    changed = (statement[1:] != statement[:-1]) | (pair[1:] != pair[:-1])
    starts = np.flatnonzero(np.r_[True, changed])
    counts = np.diff(np.r_[starts, statement.size])
    names = recorder.sources
    # Untracked atoms are made in runs (`opaque_atoms`), in increasing order: the run that
    # holds an atom is the last one starting at or before it.
    runs = [(int(a[0]), node) for a, node in recorder.untracked if a.size]
    run_starts = [start for start, _ in runs]

    def key(owner_id: int):
        if owner_id < sources:
            return names[owner_id]
        atom = owner_id - sources
        if atom not in graph:
            found = bisect.bisect_right(run_starts, atom) - 1
            node = runs[found][1] if found >= 0 else ""
            op = view.nodes[node].op_type if node else ""
            graph.add_node(atom, op=op, channels=1, node=node, untracked=True)
        return atom

    for start, count in zip(starts.tolist(), counts.tolist(), strict=True):
        made = couplings[int(statement[start])]
        graph.add_edge(
            key(int(low[start])), key(int(high[start])),
            rule=made.rule, op=made.op, node=made.node, positions=int(count),
        )  # fmt: skip
    return graph


def components(graph: nx.MultiGraph, sources: list[str], position: dict[str, int]):
    """The groups: source indices of each connected component that owns channels of some
    node, in source order, components ordered by the position of their first source."""
    index = {name: i for i, name in enumerate(sources)}
    found = []
    for component in nx.connected_components(graph):
        members = sorted(index[n] for n in component if isinstance(n, str))
        if members:
            found.append(members)
    return sorted(found, key=lambda members: position[sources[members[0]]])


def graph_format(path: str) -> str:
    """The format of `path` by its suffix: "graphml" or "json" (another is an error)."""
    suffix = PurePath(path).suffix.lower()
    if suffix not in GRAPH_FORMATS:
        raise GraphpruneError(f"--graph {path}: give a .graphml or .json path")
    return suffix[1:]


def graph_document(graph: nx.MultiGraph, format: str) -> str:
    """The graph as GraphML or node-link JSON (`format`: "graphml", "json"), both read by
    networkx and Gephi. Node ids are 0..n-1 in the graph's order; `label` holds the
    node's name, or "untracked N" for an untracked position."""
    labels = {n: n if isinstance(n, str) else f"untracked {n}" for n in graph}
    numbered = nx.convert_node_labels_to_integers(graph, label_attribute="label")
    for _, data in numbered.nodes(data=True):
        data["label"] = labels[data["label"]]
    if format == "json":
        data = nx.node_link_data(numbered, edges="edges")
        return json.dumps(data, indent=1, sort_keys=True) + "\n"
    return "\n".join(nx.generate_graphml(numbered)) + "\n"
