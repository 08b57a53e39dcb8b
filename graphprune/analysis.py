"""Dependency analysis: propagate channel layouts through the graph, op by op, and group
the coupled channels.

Each op's rule (see `graphprune.rules`) reads the layouts of its inputs through a
`Context` and states what the op does with channels: emit layouts on outputs, create new
channels, couple channels, record the edits removal implies, or stop channels it cannot
map exactly (a barrier). After the walk, coupled atoms become classes (connected
components) and producers whose classes touch become one `Group`.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np
import onnx
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
from tqdm import tqdm

from .channels import (
    Edit,
    Layout,
    MaskInput,
    SetCount,
    SliceConstant,
    SliceGroupedInput,
    Target,
)
from .graph import GraphView
from .rules import RULES


@dataclass
class Group:
    """Channels that must be removed together: one class is one removable channel."""

    id: int
    sources: list[str]
    classes: np.ndarray
    reasons: list[str] = field(default_factory=list)
    approximations: list[str] = field(default_factory=list)
    kind: str = "channels"  # "channels" (convs), "mlp" (linear widths), "heads", "hidden"

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
    approximate_norms: bool = False
    prune_outputs: bool = False

    @property
    def prunable_groups(self) -> list[Group]:
        return [g for g in self.groups if g.prunable]

    def group(self, group_id: int) -> Group:
        return self.groups[group_id]


class Context:
    """What a rule sees of one node, and the verbs it uses to describe channel flow."""

    def __init__(self, analyzer: _Analyzer, node: onnx.NodeProto) -> None:
        self._analyzer = analyzer
        self.node = node
        self.view = analyzer.view

    # Reading the node.
    def layout(self, index: int) -> Layout | None:
        name = self.view.input(self.node, index)
        return None if name is None else self._analyzer.layouts.get(name)

    def data_layout(self) -> Layout | None:
        """The data input's (input 0) layout. Channels that reach any other input (sizes,
        bounds, indices, parameters) cannot be mapped: they stop here and None is returned."""
        if any(index != 0 for index, _ in self.tracked()):
            self.block("channels reach a non-data input (sizes, bounds, indices or parameters)")
            return None
        return self.layout(0)

    def tracked(self) -> list[tuple[int, Layout]]:
        found = []
        for index, name in enumerate(self.node.input):
            if name and name in self._analyzer.layouts:
                found.append((index, self._analyzer.layouts[name]))
        return found

    def attr(self, name: str, default=None):
        return self.view.attribute(self.node, name, default)

    def constant(self, index: int) -> np.ndarray | None:
        name = self.view.input(self.node, index)
        return None if name is None else self.view.constant(name)

    def constant_shape(self, index: int) -> tuple[int, ...] | None:
        """Shape of a constant input (weights), None when it is computed at runtime."""
        name = self.view.input(self.node, index)
        return None if name is None else self.view.constant_shape(name)

    def input_shape(self, index: int):
        name = self.view.input(self.node, index)
        return None if name is None else self.view.shape(name)

    def output_shape(self, index: int = 0):
        if index >= len(self.node.output) or not self.node.output[index]:
            return None
        return self.view.shape(self.node.output[index])

    def target(self, **fields) -> Target:
        return Target(self.node.name, **fields)

    @property
    def approximate_norms(self) -> bool:
        return self._analyzer.approximate_norms

    # Describing channel flow.
    def emit(self, output_index: int, layout: Layout) -> None:
        if output_index < len(self.node.output) and self.node.output[output_index]:
            self._analyzer.layouts[self.node.output[output_index]] = layout

    def new_atoms(self, count: int) -> np.ndarray:
        """Fresh channels produced by this node (its output channels)."""
        return self._analyzer.new_atoms(count, self.node.name)

    def opaque_atoms(self, count: int, reason: str) -> np.ndarray:
        """Positions no rule can remove (e.g. an untracked input of a Concat)."""
        atoms = self._analyzer.new_atoms(count, None)
        self.freeze(atoms, reason)
        return atoms

    def couple(self, first: np.ndarray, second: np.ndarray) -> None:
        """Position i of `first` and of `second` must be removed together."""
        self._analyzer.unions.append((np.asarray(first).ravel(), np.asarray(second).ravel()))

    def couple_all(self, atoms: np.ndarray) -> None:
        atoms = np.asarray(atoms).ravel()
        if atoms.size > 1:
            self.couple(np.full(atoms.size - 1, atoms[0]), atoms[1:])

    def slice(
        self, index: int, axis: int, atoms: np.ndarray, role: str = "param", absorbs: bool = False
    ) -> None:
        self._analyzer.edits.append(
            SliceConstant(self.node.name, index, axis, atoms, role, absorbs)
        )

    def slice_grouped_input(self, index: int, atoms: np.ndarray) -> None:
        self._analyzer.edits.append(SliceGroupedInput(self.node.name, index, atoms))

    def mask_input(self, index: int, axis: int, atoms: np.ndarray) -> None:
        """Oracle only: zeroing these positions of input `index` equals their removal."""
        rank = len(self.input_shape(index) or ())
        self._analyzer.edits.append(MaskInput(self.node.name, index, axis, atoms, rank))

    def set_count(self, target: Target, atoms: np.ndarray) -> None:
        self._analyzer.edits.append(SetCount(target, atoms))

    def equal_blocks(self, atoms: np.ndarray) -> None:
        """Every row of `atoms` must lose the same number of positions."""
        if atoms.shape[0] > 1:
            self._analyzer.equal_blocks.append(atoms)

    def nonempty(self, atoms: np.ndarray) -> None:
        self._analyzer.nonempty.append(atoms)

    def freeze(self, atoms: np.ndarray, reason: str) -> None:
        self._analyzer.frozen.append((np.asarray(atoms).ravel(), reason))

    def mark_embedding(self, atoms: np.ndarray) -> None:
        """These channels are a transformer's hidden size (kind "hidden")."""
        self._analyzer.embeddings.append(np.asarray(atoms).ravel())

    def mark_heads(self, atoms: np.ndarray) -> None:
        """These channels are attention heads (for --only heads and --head-ratio)."""
        self._analyzer.heads.append(np.asarray(atoms).ravel())

    def approximate(self, atoms: np.ndarray, reason: str) -> None:
        """Removal changes the values of channels that stay (an opted-in approximation)."""
        self._analyzer.approximations.append(
            (np.asarray(atoms).ravel(), f"{self.node.op_type} '{self.node.name}': {reason}")
        )

    def block(self, reason: str) -> None:
        """Stop every tracked input here: this op cannot map their channels exactly."""
        for _, layout in self.tracked():
            self.freeze(layout.atoms, f"{self.node.op_type} '{self.node.name}': {reason}")


class _Analyzer:
    def __init__(self, view: GraphView, approximate_norms: bool, prune_outputs: bool) -> None:
        self.view = view
        self.approximate_norms = approximate_norms
        self.prune_outputs = prune_outputs
        self.embeddings: list[np.ndarray] = []
        self.approximations: list[tuple[np.ndarray, str]] = []
        self.heads: list[np.ndarray] = []
        self.layouts: dict[str, Layout] = {}
        self.atom_source: list[np.ndarray] = []
        self.atom_count = 0
        self.source_atoms: dict[str, np.ndarray] = {}
        self.unions: list[tuple[np.ndarray, np.ndarray]] = []
        self.frozen: list[tuple[np.ndarray, str]] = []
        self.edits: list[Edit] = []
        self.equal_blocks: list[np.ndarray] = []
        self.nonempty: list[np.ndarray] = []
        self.sources: list[str] = []

    def new_atoms(self, count: int, source: str | None) -> np.ndarray:
        atoms = np.arange(self.atom_count, self.atom_count + count, dtype=np.int64)
        self.atom_count += count
        if source is None:
            self.atom_source.append(np.full(count, -1, dtype=np.int64))
        else:
            self.atom_source.append(np.full(count, len(self.sources), dtype=np.int64))
            self.sources.append(source)
            self.source_atoms[source] = atoms
        return atoms

    def run(self, progress: bool) -> Analysis:
        nodes = self.view.order
        for node in tqdm(nodes, desc="analyze", unit="op", disable=not progress, leave=False):
            context = Context(self, node)
            rule = RULES.get((node.domain or "", node.op_type))
            if rule is not None:
                rule(context)
            elif context.tracked():
                domain = f"{node.domain}." if node.domain else ""
                context.block(f"no channel rule for op {domain}{node.op_type}")
        for name in [] if self.prune_outputs else self.view.graph_outputs:
            if name in self.layouts:
                self.frozen.append((self.layouts[name].atoms, f"reaches model output '{name}'"))
        return self._group()

    def _kind(self, sources: list[str], heads: bool, hidden: bool) -> str:
        if hidden:
            return "hidden"
        if heads:
            return "heads"
        return "mlp" if all(_linear(self.view, s) for s in sources) else "channels"

    def _group(self) -> Analysis:
        n = self.atom_count
        class_of = _components(n, self.unions)
        sources = np.concatenate(self.atom_source) if self.atom_source else np.zeros(0, np.int64)

        # Producers sharing a class form one group.
        owned = sources >= 0
        first_source = np.full(class_of.max(initial=-1) + 1, -1, dtype=np.int64)
        order = np.nonzero(owned)[0][::-1]  # reversed so that the lowest atom writes last
        first_source[class_of[order]] = sources[order]
        source_group = _components(
            len(self.sources), [(sources[owned], first_source[class_of[owned]])]
        )
        group_of_class = np.full(first_source.shape[0], -1, dtype=np.int64)
        valid = first_source >= 0
        group_of_class[valid] = source_group[first_source[valid]]

        reasons = _reasons_by_group(self.frozen, group_of_class, class_of)
        approximations = _reasons_by_group(self.approximations, group_of_class, class_of)
        head_groups = _groups_touched(self.heads, group_of_class, class_of)
        hidden_groups = _groups_touched(self.embeddings, group_of_class, class_of)

        members: dict[int, list[str]] = defaultdict(list)
        for index, source in enumerate(self.sources):
            members[int(source_group[index])].append(source)
        # Group ids follow graph order, so reports and plans are stable.
        position = self.view.position
        ordered = sorted(members, key=lambda gid: position[members[gid][0]])
        renumber = np.full(len(ordered), -1, dtype=np.int64)
        groups = []
        for new_id, old_id in enumerate(ordered):
            renumber[old_id] = new_id
            atoms = np.concatenate([self.source_atoms[s] for s in members[old_id]])
            classes = _unique_in_order(class_of[atoms])
            group = Group(
                new_id,
                members[old_id],
                classes,
                reasons.get(old_id, []),
                approximations.get(old_id, []),
                self._kind(members[old_id], old_id in head_groups, old_id in hidden_groups),
            )
            if group.channels < 2 and group.prunable:
                group.reasons.append("has a single channel")
            groups.append(group)
        group_of_class = np.where(group_of_class >= 0, renumber[group_of_class], -1)
        return Analysis(
            view=self.view,
            groups=groups,
            edits=self.edits,
            class_of=class_of,
            source_atoms=self.source_atoms,
            equal_blocks=self.equal_blocks,
            nonempty=self.nonempty,
            group_of_class=group_of_class,
            approximate_norms=self.approximate_norms,
            prune_outputs=self.prune_outputs,
        )


def _groups_touched(atom_lists, group_of_class, class_of) -> set[int]:
    return {int(g) for atoms in atom_lists for g in np.unique(group_of_class[class_of[atoms]])}


def _linear(view: GraphView, source: str) -> bool:
    return view.nodes[source].op_type in ("Gemm", "MatMul")


def _reasons_by_group(entries, group_of_class, class_of) -> dict[int, list[str]]:
    reasons: dict[int, list[str]] = defaultdict(list)
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


def analyze_view(
    view: GraphView,
    progress: bool = False,
    approximate_norms: bool = False,
    prune_outputs: bool = False,
) -> Analysis:
    """`approximate_norms` lets normalizations over the channel axis (LayerNormalization,
    RMSNorm, their decomposed forms) lose channels, as Torch-Pruning does and as pruning a
    transformer's hidden size needs: the statistics of the kept channels change, so such
    groups are approximate and say so in `Group.approximations`. `prune_outputs` lets
    channels that reach a model output go too (the output shape changes)."""
    return _Analyzer(view, approximate_norms, prune_outputs).run(progress)
