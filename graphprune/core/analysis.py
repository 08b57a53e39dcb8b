"""Dependency analysis: propagate channel layouts through the graph, op by op, and group
the coupled channels.

Each op's rule (see `graphprune.rules`) reads the layouts of its inputs through a
`Context` and states what the op does with channels: emit layouts on outputs, create new
channels, couple channels, record the edits removal implies, or stop channels it cannot
map exactly (a barrier). After the walk, coupled atoms become classes (connected
components of the coupled positions) and the connected components of the coupling graph
(`core.coupling`: who owns channels, and which rule coupled them) become `Group`s.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

import networkx as nx
import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
from tqdm import tqdm

from ..errors import GraphpruneError
from .blocks import UNITS, Block, find_blocks, units
from .channels import Bypass, CachePort, Edit, Kind, MaskInput, Reason
from .coupling import components, coupling_graph
from .graph import GraphView
from .rules import Context, Recorder, apply_rule


@dataclass(frozen=True)
class AnalysisOptions:
    """`approximate_norms` lets normalizations over the channel axis (LayerNormalization,
    RMSNorm, their decomposed forms) lose channels, as Torch-Pruning does and as pruning a
    transformer's hidden size needs: the statistics of the kept channels change, so such
    groups are approximate and say so in `Group.approximations`. `prune_outputs` lets
    channels that reach a model output go too (the output shape changes). `blocks` finds
    the residual blocks too, one group of kind "blocks" per unit that planning may drop
    ("layer": consecutive blocks of one period, "branch": each block; see
    `graphprune.core.blocks`). `approximate_dynamic_quant` lets channels go through a
    DynamicQuantizeLinear (onnxruntime's `quantize_dynamic`): its scale is the range of
    the whole tensor, so the kept channels are requantized on the kept channels' range
    (approximate, `graphprune.core.rules.quantized`). `prune_cache` lets a KV cache that
    is a graph input (onnxruntime-genai's past_key_values.N.key/value) lose heads, and
    the present outputs that carry the same heads with it (`Analysis.cache_ports`)."""

    approximate_norms: bool = False
    approximate_dynamic_quant: bool = False
    prune_outputs: bool = False
    blocks: str | None = None
    prune_cache: bool = False

    def __post_init__(self) -> None:
        if self.blocks is not None and self.blocks not in UNITS:
            raise GraphpruneError(f"unknown block unit {self.blocks!r} (layer or branch)")


@dataclass
class Group:
    """Channels that must be removed together: one class is one removable channel."""

    id: int
    sources: list[str]
    classes: np.ndarray
    reasons: list[Reason] = field(default_factory=list)
    approximations: list[Reason] = field(default_factory=list)
    kind: Kind = "channels"

    @property
    def channels(self) -> int:
        return int(self.classes.shape[0])

    @property
    def prunable(self) -> bool:
        return not self.reasons

    @property
    def name(self) -> str:
        return self.sources[0]


@dataclass
class Analysis:
    """The result of `analyze`: groups plus everything the planner and rewrite need."""

    view: GraphView
    groups: list[Group]
    edits: list[Edit]
    class_of: np.ndarray  # atom -> class
    source_atoms: dict[str, np.ndarray]  # producing node -> its atoms, by channel index
    equal_blocks: list[np.ndarray]  # (blocks, per block) atom arrays: equal removal per block
    nonempty: list[np.ndarray]  # atom arrays that must keep at least one position
    group_of_class: np.ndarray  # class -> group id, -1 for classes outside any group
    options: AnalysisOptions = AnalysisOptions()
    ops_without_rule: dict[str, int] = field(default_factory=dict)  # op -> node count
    minimums: list[tuple[np.ndarray, int]] = field(default_factory=list)  # keep >= n of atoms
    experts: list[tuple[str, np.ndarray]] = field(default_factory=list)  # (router, atoms)
    blocks: dict[str, Block] = field(default_factory=dict)  # residual Add -> its block
    cache_ports: list[CachePort] = field(default_factory=list)  # --prune-kv-cache
    coupling: nx.MultiGraph = field(default_factory=nx.MultiGraph)  # see core.coupling

    @property
    def approximate_norms(self) -> bool:
        return self.options.approximate_norms

    @property
    def approximate_dynamic_quant(self) -> bool:
        return self.options.approximate_dynamic_quant

    @property
    def prune_outputs(self) -> bool:
        return self.options.prune_outputs

    @property
    def prunable_groups(self) -> list[Group]:
        return [g for g in self.groups if g.prunable]

    def cache_positions(self, keep_atom: np.ndarray) -> dict[str, tuple[int, np.ndarray]]:
        """Each KV cache input and output: its head axis and the positions that stay."""
        return {port.name: (port.axis, port.kept(keep_atom)) for port in self.cache_ports}

    def cache_sizes(self, keep_atom: np.ndarray) -> dict[str, tuple[int, int]]:
        """Each KV cache input and output: its head axis and how many heads stay."""
        return {name: (axis, int(kept.size))
                for name, (axis, kept) in self.cache_positions(keep_atom).items()}  # fmt: skip

    def group(self, group_id: int) -> Group:
        return self.groups[group_id]

    def coupling_graph(self, group: int | None = None) -> nx.MultiGraph:
        """Why channels go together (`graphprune.core.coupling`): nodes own channels (a
        node's outputs, or an untracked position), each with its `group`; edges are the
        coupling statements (`rule`, `op`, `node`, `positions`). Its connected components
        that own channels are the groups. `group`: that group's part alone (a copy)."""
        if group is None:
            return self.coupling
        nodes = [n for n, g in self.coupling.nodes(data="group") if g == group]
        return self.coupling.subgraph(nodes).copy()


def analyze_view(
    view: GraphView, *, options: AnalysisOptions | None = None, progress: bool = False
) -> Analysis:
    """Walk the graph in topological order, let each op's rule state its channel flow, and
    group the coupled channels (see `AnalysisOptions`)."""
    options = options or AnalysisOptions()
    recorder = Recorder()
    # A with-block closes the bar on errors too, so no half-drawn line stays on stderr.
    with tqdm(view.order, desc="analyze", unit="op", disable=not progress, leave=False) as bar:
        for node in bar:
            context = Context(
                recorder,
                view,
                node,
                approximate_norms=options.approximate_norms,
                approximate_dynamic_quant=options.approximate_dynamic_quant,
                prune_cache=options.prune_cache,
            )
            apply_rule(context)
    cached = {int(a) for port in recorder.cache_ports for a in port.atoms}
    for name in [] if options.prune_outputs else view.graph_outputs:
        layout = recorder.layouts.get(name)
        if layout is None:
            continue
        plain = not (layout.tiled or layout.count or layout.index)
        if plain and cached and cached.issuperset(layout.atoms.ravel().tolist()):
            # A present output holding the heads of a cache input: they change together.
            recorder.cache_ports.append(CachePort(name, layout.axis, layout.atoms, output=True))
            continue
        reason = Reason(f"reaches model output '{name}'", option="--prune-outputs")
        recorder.freeze(layout.atoms, reason)
    blocks = _record_blocks(view, recorder, options.blocks) if options.blocks else []
    analysis = _group(view, recorder, options, {b.add for b in blocks})
    analysis.blocks = {b.add: b for b in blocks}
    return analysis


def _record_blocks(view: GraphView, recorder: Recorder, unit: str) -> list[Block]:
    """One atom per residual block, coupled per unit, with the rewiring and the oracle's
    zeroed branch as edits."""
    found = find_blocks(view)
    for members in units(view, found, unit):
        atoms = [recorder.new_atoms(1, block.add) for block in members]
        for block, atom in zip(members, atoms, strict=True):
            recorder.couple(atoms[0], atom, "blocks.units", "Add", block.add)
            recorder.edits.append(Bypass(block.add, block.residual, atom))
            recorder.edits.append(MaskInput(block.add, block.branch, 0, atom, block.rank))
            if block.reason is not None:
                recorder.freeze(atom, block.reason)
    return found


def _kind(
    view: GraphView, sources: list[str], heads: bool, hidden: bool, experts: bool, blocks
) -> Kind:
    if blocks.issuperset(sources):
        return "blocks"
    if experts:
        return "experts"
    if hidden:
        return "hidden"
    if heads:
        return "heads"
    return "mlp" if all(_linear(view, s) for s in sources) else "channels"


def _group(view: GraphView, recorder: Recorder, options: AnalysisOptions, blocks) -> Analysis:
    couplings = recorder.couplings
    class_of = _components(recorder.atom_count, [(c.first, c.second) for c in couplings])
    sources = (
        np.concatenate(recorder.atom_source) if recorder.atom_source else np.zeros(0, np.int64)
    )
    graph = coupling_graph(view, recorder, sources)
    # Group ids follow graph order, so reports and plans are stable.
    members = components(graph, recorder.sources, view.position)
    group_of_source = np.full(len(recorder.sources), -1, dtype=np.int64)
    for group_id, indices in enumerate(members):
        group_of_source[indices] = group_id
    # A class's group: that of any source owning one of its atoms (they all agree).
    owned = sources >= 0
    group_of_class = np.full(class_of.max(initial=-1) + 1, -1, dtype=np.int64)
    group_of_class[class_of[owned]] = group_of_source[sources[owned]]

    reasons = _reasons_by_group(recorder.frozen, group_of_class, class_of)
    approximations = _reasons_by_group(recorder.approximations, group_of_class, class_of)
    head_groups = _groups_touched(recorder.heads, group_of_class, class_of)
    hidden_groups = _groups_touched(recorder.embeddings, group_of_class, class_of)
    expert_groups = _groups_touched([a for _, a in recorder.experts], group_of_class, class_of)

    groups = []
    for group_id, indices in enumerate(members):
        names = [recorder.sources[i] for i in indices]
        atoms = np.concatenate([recorder.source_atoms[s] for s in names])
        classes = _unique_in_order(class_of[atoms])
        marked = (group_id in head_groups, group_id in hidden_groups, group_id in expert_groups)
        group = Group(
            group_id,
            names,
            classes,
            reasons.get(group_id, []),
            approximations.get(group_id, []),
            _kind(view, names, *marked, blocks),
        )
        if group.channels < 2 and group.prunable and group.kind != "blocks":
            few = "no channels (a zero-sized dim)" if group.channels == 0 else "a single channel"
            group.reasons.append(Reason(f"has {few}"))
        groups.append(group)
    _label_nodes(graph, recorder.sources, group_of_source, class_of, group_of_class, groups)
    return Analysis(
        view=view,
        groups=groups,
        edits=recorder.edits,
        class_of=class_of,
        source_atoms=recorder.source_atoms,
        equal_blocks=recorder.equal_blocks,
        nonempty=recorder.nonempty,
        group_of_class=group_of_class,
        options=options,
        ops_without_rule=dict(sorted(recorder.without_rule.items())),
        minimums=recorder.minimums,
        experts=recorder.experts,
        coupling=graph,
        cache_ports=recorder.cache_ports,
    )


def _label_nodes(graph, sources, group_of_source, class_of, group_of_class, groups) -> None:
    """Each coupling-graph node's group and kind (-1 and "" for untracked positions
    coupled with no node's channels)."""
    index = {name: i for i, name in enumerate(sources)}
    for node, data in graph.nodes(data=True):
        if isinstance(node, str):
            group_id = int(group_of_source[index[node]])
        else:
            group_id = int(group_of_class[class_of[node]])
        data["group"] = group_id
        data["kind"] = groups[group_id].kind if group_id >= 0 else ""


def _groups_touched(atom_lists, group_of_class, class_of) -> set[int]:
    return {int(g) for atoms in atom_lists for g in np.unique(group_of_class[class_of[atoms]])}


# Linear layers, float and quantized (QOperator, integer, onnxruntime's contrib ops), and
# onnxruntime's fused mixture-of-experts MLPs.
_LINEAR = {
    "Gemm", "MatMul", "QGemm", "QLinearMatMul", "MatMulInteger", "MatMulIntegerToFloat",
    "DynamicQuantizeMatMul", "MatMulNBits", "MoE", "FusedMatMul",
}  # fmt: skip


def _linear(view: GraphView, source: str) -> bool:
    return view.nodes[source].op_type in _LINEAR


def _reasons_by_group(entries, group_of_class, class_of) -> dict[int, list[Reason]]:
    reasons: dict[int, list[Reason]] = defaultdict(list)
    for atoms, reason in entries:
        for gid in np.unique(group_of_class[class_of[atoms]]):
            if gid >= 0 and reason not in reasons[int(gid)]:
                reasons[int(gid)].append(reason)
    return reasons


def _components(count: int, pairs: list[tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
    """Connected-component label of each of `count` items, given pairs to join."""
    if count == 0:
        return np.zeros(0, dtype=np.int64)
    rows = np.concatenate([a for a, _ in pairs]) if pairs else np.zeros(0, np.int64)
    cols = np.concatenate([b for _, b in pairs]) if pairs else np.zeros(0, np.int64)
    matrix = coo_matrix((np.ones(rows.shape[0], np.int8), (rows, cols)), shape=(count, count))
    _, labels = connected_components(matrix, directed=False)
    return labels.astype(np.int64)


def _unique_in_order(values: np.ndarray) -> np.ndarray:
    _, first = np.unique(values, return_index=True)
    return values[np.sort(first)]
