"""Budgets: keep a fraction of the model's MACs or parameters instead of a ratio per group.

Like FLAP (An et al., AAAI 2024) the removal is global: every candidate channel is ranked
by its normalised score across all groups, and channels go lowest first (never more than
`max_group_ratio` of a group, never below `min_keep`), so groups whose channels matter
less lose more. How many go is found by bisection on the length of that ranked list,
each candidate length rounded per group (`round_to`, grouped-conv blocks) exactly as the
planner will round it, until the estimated cost reaches the target.

The cost is computed from the edits, without rewriting: a weight's size is the product of
its kept extents, and a Conv/Gemm/MatMul's MACs scale with the kept fraction of every
weight axis that loses channels (exact for those ops; activation x activation MatMuls
scale with their contracted positions only, an estimate). The report gives the MACs and
parameters measured on the pruned model.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from ..core.analysis import Analysis, Group
from ..core.channels import MaskInput, SliceConstant, SliceGroupedInput
from ..core.metrics import WEIGHT_INPUT, count_params, is_parameter, node_macs
from ..errors import GraphpruneError
from ..io.shapes import infer_shapes
from ..runtime.inputs import input_shapes
from ..runtime.profile import LatencyTable

METRICS = ("macs", "params", "latency")


@dataclass(frozen=True)
class Budget:
    """Keep `keep` (0 < keep <= 1) of the model's `metric`; `shapes` fix symbolic input
    dims for counting MACs (default: those `graphprune prune` validates with); a latency
    budget predicts from `table` (`graphprune.planning.latency`)."""

    metric: str
    keep: float
    shapes: dict[str, tuple[int, ...]] | None = None
    table: LatencyTable | None = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        if self.metric not in METRICS:
            raise GraphpruneError(f"unknown budget metric {self.metric!r} (macs or params)")
        if not 0.0 < self.keep <= 1.0:
            raise GraphpruneError(
                f"--target-{self.metric} must be a fraction to keep in (0, 1], got {self.keep}"
            )


class CostModel:
    """Estimated MACs and parameters of the model for a given set of kept atoms."""

    def __init__(self, analysis: Analysis, metric: str, shapes=None) -> None:
        view = analysis.view
        self.items: list[tuple[float, list[np.ndarray]]] = []
        by_input: dict[tuple[str, int], list] = defaultdict(list)
        for edit in analysis.edits:
            if isinstance(edit, SliceConstant | SliceGroupedInput):
                by_input[(edit.node, edit.input_index)].append(edit)
        owners = block_owners(analysis)
        if metric == "params":
            self.total = float(count_params(view.model))
            seen: dict[str, int] = {}
            for (node, index), edits in sorted(by_input.items()):
                storage = view.storage(view.nodes[node].input[index])
                shape = view.constant_shape(view.nodes[node].input[index])
                if storage is None or storage in seen or shape is None:
                    continue
                stored = view.initializers.get(storage)
                if stored is not None and not is_parameter(stored.data_type):
                    continue
                seen[storage] = len(self.items)
                self.items.append((float(math.prod(shape)), _axes(edits)))
            for storage, atoms in _block_weights(view, owners).items():
                if storage in seen:
                    size, axes = self.items[seen[storage]]
                    self.items[seen[storage]] = (size, axes + atoms)
                else:
                    size = float(math.prod(view.initializers[storage].dims))
                    self.items.append((size, atoms))
        else:
            concrete = infer_shapes(view.model, input_shapes(view.model, shapes))
            self.total = 0.0
            masks: dict[str, list] = defaultdict(list)
            for edit in analysis.edits:
                if isinstance(edit, MaskInput):
                    masks[edit.node].append(edit)
            for node in view.order:
                macs = float(node_macs(node, concrete))
                self.total += macs
                edits = _weight_edits(view, node, by_input) + masks.get(node.name, [])
                axes = _axes(edits) + owners.get(node.name, [])
                if macs and axes:
                    self.items.append((macs, axes))
        self.fixed = self.total - sum(base for base, _ in self.items)

    def cost(self, keep_atom: np.ndarray) -> float:
        total = self.fixed
        for base, axes in self.items:
            fraction = 1.0
            for atoms in axes:
                fraction *= float(keep_atom[atoms].mean()) if atoms.size else 1.0
            total += base * fraction
        return total


def block_owners(analysis: Analysis) -> dict[str, list[np.ndarray]]:
    """Node -> the atoms of the residual blocks whose removal takes it along (a node in
    nested branches has several: it goes when any of them goes)."""
    owners: dict[str, list[np.ndarray]] = defaultdict(list)
    for add, block in analysis.blocks.items():
        for name in block.owned:
            owners[name].append(analysis.source_atoms[add])
    return owners


def _block_weights(view, owners) -> dict[str, list[np.ndarray]]:
    """Float initializers that only nodes of residual blocks read, with the block atoms
    they go with (those every reader shares)."""
    found: dict[str, list[np.ndarray]] = {}
    if not owners:
        return found
    for storage, tensor in view.initializers.items():
        readers = view.consumers(storage)
        if not readers or not is_parameter(tensor.data_type):
            continue
        shared = None
        for node, _ in readers:
            atoms = {int(a[0]) for a in owners.get(node.name, [])}
            shared = atoms if shared is None else shared & atoms
        if shared:
            found[storage] = [np.array([atom]) for atom in sorted(shared)]
    return found


def _weight_edits(view, node, by_input) -> list:
    """The edits of a node's weight: its own input, or the integer input of the
    DequantizeLinear that computes it (QDQ)."""
    index = WEIGHT_INPUT.get(node.op_type, 1)
    edits = by_input.get((node.name, index), [])
    producer = view.producer(node.input[index]) if len(node.input) > index else None
    if not edits and producer is not None and producer.op_type == "DequantizeLinear":
        edits = by_input.get((producer.name, 0), [])
    return edits


def _axes(edits) -> list[np.ndarray]:
    """One atom array per edited axis (edits on one axis of one input do not multiply)."""
    axes: dict[tuple[bool, object], np.ndarray] = {}
    for edit in edits:
        axis = "grouped" if isinstance(edit, SliceGroupedInput) else edit.axis
        axes.setdefault((isinstance(edit, MaskInput), axis), edit.atoms.ravel())
    return list(axes.values())


def budget_counts(
    analysis: Analysis,
    candidates: list[Group],
    scores: np.ndarray,
    budget: Budget,
    min_keep: int,
    max_group_ratio: float,
    kept_positions: Callable[[Group, int], list[int]],
    *,
    base_removed: np.ndarray | None = None,
    model=None,
    weights: dict[int, float] | None = None,
) -> tuple[dict[int, int], list[str], dict]:
    """Channels to keep per candidate group so that the estimated cost meets the budget.

    `kept_positions(group, keep)` is the planner's own rounding and selection, so the
    counts returned here survive its rounding unchanged; `base_removed` are classes that
    go in any case (dropped residual units). `model` replaces the MACs/params cost model (a
    latency model); `weights` divide each group's scores (the cost of its channels:
    importance per unit of cost ranks). Returns the counts, notes and a summary for the
    report."""
    model = model or CostModel(analysis, budget.metric, budget.shapes)
    target = budget.keep * model.total
    limit = {
        g.id: min(g.channels - min_keep, math.floor(g.channels * max_group_ratio))
        for g in candidates
    }
    weight = weights or {}
    entries = sorted(
        (float(scores[c]) / weight.get(g.id, 1.0), g.id, i)
        for g in candidates
        for i, c in enumerate(g.classes)
    )
    accepted: list[int] = []
    taken = dict.fromkeys(limit, 0)
    for _, gid, _ in entries:
        if taken[gid] < limit[gid]:
            taken[gid] += 1
            accepted.append(gid)
    groups = {g.id: g for g in candidates}

    def evaluate(k: int) -> tuple[float, dict[int, int]]:
        removed = dict.fromkeys(limit, 0)
        for gid in accepted[:k]:
            removed[gid] += 1
        keep_atom = np.ones(analysis.class_of.shape[0], dtype=bool)
        if base_removed is not None and base_removed.size:
            keep_atom &= ~np.isin(analysis.class_of, base_removed)
        counts = {}
        removed_classes = []
        for gid, group in groups.items():
            kept = kept_positions(group, group.channels - removed[gid])
            counts[gid] = len(kept)
            mask = np.ones(group.channels, dtype=bool)
            mask[kept] = False
            removed_classes.append(group.classes[mask])
        if removed_classes:
            dropped = np.isin(analysis.class_of, np.concatenate(removed_classes))
            keep_atom &= ~dropped
        return model.cost(keep_atom), counts

    low, high = 0, len(accepted)
    best_cost, best_counts = evaluate(high)
    notes = []
    if best_cost > target:
        notes.append(
            f"{budget.metric} target {budget.keep:.1%} not reachable within the group limits: "
            f"best {best_cost / model.total:.1%}"
        )
        low = high
    while low < high:
        middle = (low + high) // 2
        cost, counts = evaluate(middle)
        if cost <= target:
            high, best_cost, best_counts = middle, cost, counts
        else:
            low = middle + 1
    summary = {
        "metric": budget.metric,
        "target_keep": budget.keep,
        "estimated_keep": round(best_cost / model.total, 6) if model.total else 1.0,
        "groups": {groups[g].name: [best_counts[g], groups[g].channels] for g in best_counts},
    }
    if budget.metric == "latency":
        summary["predicted_ms"] = round(best_cost, 5)
    estimated = summary["estimated_keep"]
    notes.append(f"budget: keep {budget.keep:.1%} of {budget.metric}, estimated {estimated:.1%}")
    return best_counts, notes, summary
