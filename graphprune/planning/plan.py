"""Choosing which channels go: per-group or global ratios, rounding, minimums, grouped-conv
constraints, ignore patterns, and plans saved to and loaded from JSON."""

from __future__ import annotations

import fnmatch
import math
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from ..core.analysis import Analysis, Group
from ..core.channels import KINDS, Kind, SliceConstant, SliceGroupedInput, edit_node
from ..errors import GraphpruneError
from ..posttrain.statistics import CalibrationStats
from .budget import Budget, budget_counts
from .depth import BLOCK_CRITERIA, block_units, choose_units
from .importance import class_scores, default_normalization
from .latency import LatencyCostModel, cost_weights, snap_steps


@dataclass
class GroupChoice:
    """What one group keeps; indices are positions in `Group.classes` order."""

    group: int
    removed: list[int]
    kept: list[int]


@dataclass
class Plan:
    """The channels a prune removes: per group, and as classes of the analysis. `options`
    is the record of how they were chosen (JSON, as reports and the metadata keep it)."""

    choices: list[GroupChoice]
    removed_classes: np.ndarray
    options: dict = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    budget: dict | None = None  # what each group got under a MACs/params target
    blocks: list[dict] | None = None  # with drop_blocks: each residual unit and its score

    def keep_atom(self, analysis: Analysis) -> np.ndarray:
        return ~np.isin(analysis.class_of, self.removed_classes)

    def to_json(self, analysis: Analysis) -> dict:
        # Recorded only when given: the plans of every other prune stay as they were.
        dynamic = {"approximate_dynamic_quant": True} if analysis.approximate_dynamic_quant else {}
        return {
            "options": {
                **self.options,
                "approximate_norms": analysis.approximate_norms,
                **dynamic,
                "prune_outputs": analysis.prune_outputs,
                **({"blocks": analysis.options.blocks} if analysis.options.blocks else {}),
                **({"prune_kv_cache": True} if analysis.options.prune_cache else {}),
            },
            "groups": [
                {
                    "name": analysis.groups[c.group].name,
                    "sources": analysis.groups[c.group].sources,
                    "channels": analysis.groups[c.group].channels,
                    "removed": c.removed,
                }
                for c in self.choices
            ],
        }


@dataclass(frozen=True)
class PlanOptions:
    """How to choose the channels that go.

    `ratio` of the channels of every prunable group go (or of all of them ranked together,
    `global_ranking`, never more than `max_group_ratio` of a group), lowest scores first
    by `criterion` (`graphprune.planning.importance`); a `budget` (keep a fraction of MACs
    or params) replaces `ratio` and ranks globally (`graphprune.planning.budget`). Every
    group keeps a multiple of `round_to` and at least `min_keep`. `ignore` (glob patterns of
    node or initializer names) leaves the groups touching them alone. `only` restricts
    pruning to group kinds; `kind_ratios` gives a kind its own per-group ratio.
    `drop_blocks` residual units (groups of kind "blocks", found when the analysis looks
    for them) go, the lowest by `block_criterion` (`graphprune.planning.depth`), before
    any channel is chosen; ratios and budgets never drop a unit by themselves.
    `group_weights` (group name -> factor > 0) multiply that group's scores before they
    are ranked together: measured sensitivities of the model's output to each layer's
    error (with "obs-greedy", whose scores are relative error slopes)."""

    ratio: float = 0.0
    criterion: str = "l2"
    global_ranking: bool = False
    round_to: int = 1
    min_keep: int = 1
    max_group_ratio: float = 0.9
    ignore: tuple[str, ...] = ()
    reduction: str = "mean"
    normalization: str | None = None  # None: importance.default_normalization(criterion)
    seed: int = 0
    budget: Budget | None = None
    only: tuple[Kind, ...] = ()
    kind_ratios: Mapping[str, float] = field(default_factory=dict)
    group_weights: Mapping[str, float] = field(default_factory=dict)
    drop_blocks: int = 0
    block_criterion: str = "influence"

    def __post_init__(self) -> None:
        object.__setattr__(self, "ignore", tuple(self.ignore))
        object.__setattr__(self, "only", tuple(self.only))
        object.__setattr__(self, "kind_ratios", dict(self.kind_ratios))
        object.__setattr__(self, "group_weights", dict(self.group_weights))
        if any(not 0.0 < w < math.inf for w in self.group_weights.values()):
            raise GraphpruneError("group weights must be positive and finite")
        if self.budget is None and not 0.0 <= self.ratio < 1.0:
            raise GraphpruneError(f"ratio must be in [0, 1), got {self.ratio}")
        if not 0.0 <= self.max_group_ratio <= 1.0:
            raise GraphpruneError(f"max group ratio must be in [0, 1], got {self.max_group_ratio}")
        if self.round_to < 1 or self.min_keep < 1:
            raise GraphpruneError("round-to and min-keep must be at least 1")
        for kind in [*self.only, *self.kind_ratios]:
            if kind not in KINDS:
                raise GraphpruneError(
                    f"unknown group kind {kind!r} (choose from {', '.join(KINDS)})"
                )
        if any(not 0.0 <= r < 1.0 for r in self.kind_ratios.values()):
            raise GraphpruneError("per-kind ratios must be in [0, 1)")
        if self.drop_blocks < 0:
            raise GraphpruneError(f"--drop-blocks must be at least 0, got {self.drop_blocks}")
        if self.block_criterion not in BLOCK_CRITERIA:
            raise GraphpruneError(
                f"unknown block criterion {self.block_criterion!r} "
                f"(choose from {', '.join(BLOCK_CRITERIA)})"
            )

    @property
    def resolved_normalization(self) -> str:
        if self.normalization is not None:
            return self.normalization
        return default_normalization(self.criterion)

    def to_json(self) -> dict:
        """The options as the plan records them (in reports and the model's metadata)."""
        options = {
            "ratio": self.ratio, "criterion": self.criterion, "global": self.global_ranking,
            "round_to": self.round_to, "min_keep": self.min_keep, "ignore": list(self.ignore),
            "reduction": self.reduction, "normalization": self.resolved_normalization,
            "seed": self.seed, "only": list(self.only), "kind_ratios": dict(self.kind_ratios),
        }  # fmt: skip
        if self.budget is not None:
            options[f"target_{self.budget.metric}"] = self.budget.keep
        if self.group_weights:
            options["group_weights"] = dict(self.group_weights)
        if self.drop_blocks:
            options["drop_blocks"] = self.drop_blocks
            options["block_criterion"] = self.block_criterion
        return options


def make_plan(
    analysis: Analysis, options: PlanOptions, *, stats: CalibrationStats | None = None
) -> Plan:
    """The channels to remove under `options`; `stats` (calibration statistics) feed the
    calibrated criteria."""
    check_weights(analysis)
    ratio, criterion, round_to, min_keep = (
        options.ratio, options.criterion, options.round_to, options.min_keep
    )  # fmt: skip
    normalization, budget, only = options.resolved_normalization, options.budget, options.only
    kind_ratios = options.kind_ratios
    scores, fallback = class_scores(
        analysis, criterion, options.reduction, normalization, options.seed, stats
    )
    fallback = [g for g in fallback if analysis.groups[g].kind != "blocks"]  # scored apart
    scores = _weighted(analysis, scores, options.group_weights)
    lacks = "BatchNorm scale" if criterion == "bn" else "calibrated consumer"
    notes = [f"group '{analysis.groups[g].name}' has no {lacks}: scored by l2" for g in fallback]
    excluded = _ignored(analysis, options.ignore)
    partitions, partition_problems = _partitions(analysis)
    dropped, inside, block_rows = _dropped_blocks(analysis, options, stats, set(excluded), notes)
    candidates = [
        g
        for g in analysis.prunable_groups
        if g.id not in excluded and g.id not in partition_problems and (not only or g.kind in only)
        and g.kind != "blocks" and not inside.issuperset(g.sources)
    ]  # fmt: skip
    notes += [f"group '{analysis.groups[g].name}' ignored: {why}" for g, why in excluded.items()]
    notes += [
        f"group '{analysis.groups[g].name}' kept: {why}" for g, why in partition_problems.items()
    ]
    summary = None
    steps: dict[int, int] = {}  # per group: the multiple it keeps, when not round_to
    if budget is not None:
        cost_model = weights = None
        if budget.metric == "latency":
            if budget.table is None:
                raise GraphpruneError("a latency budget needs a latency table")
            cost_model = LatencyCostModel(analysis, budget.table)
            steps = snap_steps(analysis, cost_model, round_to)
            weights = cost_weights(analysis, cost_model, [g.id for g in candidates])

        def kept_positions(group: Group, keep: int) -> list[int]:
            partition = partitions.get(group.id)
            step = steps.get(group.id, round_to)
            keep = _round_keep(keep, group.channels, step, min_keep, partition)
            return _select(group, scores, keep, partition)

        counts, budget_notes, summary = budget_counts(
            analysis, candidates, scores, budget, min_keep, options.max_group_ratio,
            kept_positions, base_removed=dropped, model=cost_model, weights=weights,
        )  # fmt: skip
        notes += budget_notes
    else:
        ranked = [g for g in candidates if options.global_ranking and g.kind not in kind_ratios]
        counts = _global_counts(ranked, scores, ratio, min_keep, options.max_group_ratio)
        for group in candidates:
            if group.id not in counts:
                share = kind_ratios.get(group.kind, ratio)
                counts[group.id] = group.channels - math.floor(group.channels * share)
    choices = []
    for group in candidates:
        step = steps.get(group.id, round_to)
        partition = partitions.get(group.id)
        keep = _round_keep(counts[group.id], group.channels, step, min_keep, partition)
        kept = _select(group, scores, keep, partitions.get(group.id))
        removed = sorted(set(range(group.channels)) - set(kept))
        if removed:
            choices.append(GroupChoice(group.id, removed, sorted(kept)))
    removed_classes = np.union1d(_removed_classes(analysis, choices), dropped)
    removed_classes = _keep_one_per_nonempty(analysis, removed_classes, scores, notes)
    removed_classes = _keep_minimums(analysis, removed_classes, scores, notes)
    choices = _choices_from(analysis, removed_classes)
    plan = Plan(choices, removed_classes, options.to_json(), notes)
    plan.budget = summary
    plan.blocks = block_rows
    return plan


def _weighted(analysis: Analysis, scores: np.ndarray, weights: Mapping[str, float]):
    """Each weighted group's class scores times its weight (`PlanOptions.group_weights`)."""
    if not weights:
        return scores
    by_name = {g.name: g for g in analysis.groups}
    unknown = sorted(set(weights) - set(by_name))
    if unknown:
        raise GraphpruneError(f"group weights name no group of this model: {', '.join(unknown)}")
    scores = scores.copy()
    for name, weight in weights.items():
        scores[by_name[name].classes] *= weight
    return scores


def _dropped_blocks(analysis: Analysis, options: PlanOptions, stats, excluded: set[int], notes):
    """The classes of the residual units that go, and the nodes that go with them."""
    if not options.drop_blocks:
        return np.zeros(0, dtype=np.int64), set(), None
    units = block_units(analysis, options.block_criterion, stats=stats, seed=options.seed)
    chosen = choose_units(units, options.drop_blocks, excluded)
    for unit in chosen:
        notes.append(
            f"dropped block unit '{unit.name}' ({', '.join(unit.adds)}; "
            f"{options.block_criterion} {unit.score:.4g})"
        )
    rows = [
        {
            "name": u.name, "adds": list(u.adds), "prunable": u.prunable,
            "score": round(u.score, 6), "dropped": u in chosen,
        }
        for u in units
    ]  # fmt: skip
    classes = [analysis.groups[u.group].classes for u in chosen]
    inside = {name for unit in chosen for name in unit.nodes}
    return np.sort(np.concatenate(classes)), inside, rows


def check_weights(analysis: Analysis) -> None:
    """Refuse a model whose weights disagree with their consumers (a Conv's input channels,
    a Gemm's K): it does not run, and no slice of such a weight is defined."""
    view = analysis.view
    for edit in analysis.edits:
        if not isinstance(edit, SliceConstant | SliceGroupedInput):
            continue
        name = view.nodes[edit.node].input[edit.input_index]
        shape = view.constant_shape(name)
        if shape is None:
            continue
        if isinstance(edit, SliceGroupedInput):
            groups, per_group = edit.atoms.shape
            fits = len(shape) > 1 and shape[0] % groups == 0 and shape[1] == per_group
        else:
            packed = -(-edit.atoms.size // edit.pack)  # 4-bit codes: two per byte
            fits = edit.axis < len(shape) and shape[edit.axis] == packed
        if not fits:
            raise GraphpruneError(
                f"weight '{name}' {list(shape)} of node '{edit.node}' does not match its "
                f"input's {edit.atoms.size} channels"
            )


def _ignored(analysis: Analysis, patterns) -> dict[int, str]:
    if not patterns:
        return {}
    view = analysis.view
    names_by_group: dict[int, set[str]] = {g.id: set(g.sources) for g in analysis.groups}
    for edit in analysis.edits:
        extra = {edit_node(edit)}
        if isinstance(edit, SliceConstant | SliceGroupedInput):
            storage = view.storage(view.nodes[edit.node].input[edit.input_index])
            extra.add(storage or "")
        for gid in np.unique(analysis.group_of_class[analysis.class_of[edit.atoms.ravel()]]):
            if gid >= 0:
                names_by_group[int(gid)] |= extra
    all_names = set(view.nodes) | set(view.initializers)
    excluded: dict[int, str] = {}
    for pattern in patterns:
        if not any(fnmatch.fnmatchcase(name, pattern) for name in all_names):
            raise GraphpruneError(f"--ignore {pattern!r} matches no node or initializer")
        for gid, names in names_by_group.items():
            if gid not in excluded and any(fnmatch.fnmatchcase(n, pattern) for n in names):
                excluded[gid] = f"matches --ignore {pattern!r}"
    return excluded


def _partitions(analysis: Analysis) -> tuple[dict[int, np.ndarray], dict[int, str]]:
    """Grouped convs require equal removal per conv group. Returns, per group, its class
    positions arranged as (conv groups, per conv group), and groups whose constraints we
    cannot satisfy exactly."""
    partitions: dict[int, np.ndarray] = {}
    problems: dict[int, str] = {}
    for blocks in analysis.equal_blocks:
        classes = analysis.class_of[blocks]
        groups = np.unique(analysis.group_of_class[classes])
        groups = groups[groups >= 0]
        if len(groups) != 1:
            for gid in groups:
                problems[int(gid)] = "a grouped conv mixes channels of several groups"
            continue
        group = analysis.groups[int(groups[0])]
        index = {int(c): i for i, c in enumerate(group.classes)}
        if len(np.unique(classes)) != classes.size or classes.size != group.channels:
            problems[group.id] = "grouped conv constraint does not partition the group"
            continue
        positions = np.vectorize(index.__getitem__)(classes)
        previous = partitions.get(group.id)
        if previous is not None and not _same_partition(previous, positions):
            problems[group.id] = "two grouped convs partition the group differently"
            continue
        partitions[group.id] = positions
    return partitions, problems


def _same_partition(a: np.ndarray, b: np.ndarray) -> bool:
    return sorted(map(sorted, a.tolist())) == sorted(map(sorted, b.tolist()))


def _round_keep(keep: int, channels: int, round_to: int, min_keep: int, partition) -> int:
    step = round_to
    if partition is not None:
        step = math.lcm(step, partition.shape[0])
    keep = max(keep, min_keep)
    keep = math.ceil(keep / step) * step
    return min(keep, channels)


def _select(group: Group, scores: np.ndarray, keep: int, partition) -> list[int]:
    values = scores[group.classes]
    if partition is None:
        order = np.argsort(-values, kind="stable")
        return order[:keep].tolist()
    per_block = keep // partition.shape[0]
    kept: list[int] = []
    for row in partition:
        order = row[np.argsort(-values[row], kind="stable")]
        kept += order[:per_block].tolist()
    return kept


def _global_counts(groups: list[Group], scores, ratio, min_keep, max_group_ratio) -> dict[int, int]:
    """Rank the normalised scores of every candidate class together and remove the lowest
    `ratio` of them, never more than `max_group_ratio` of one group."""
    total = sum(g.channels for g in groups)
    budget = math.floor(total * ratio)
    entries = sorted((float(scores[c]), g.id, i) for g in groups for i, c in enumerate(g.classes))
    limit = {
        g.id: min(g.channels - min_keep, math.floor(g.channels * max_group_ratio)) for g in groups
    }
    removed = dict.fromkeys(limit, 0)
    for _, gid, _ in entries:
        if budget == 0:
            break
        if removed[gid] < limit[gid]:
            removed[gid] += 1
            budget -= 1
    return {g.id: g.channels - removed[g.id] for g in groups}


def _removed_classes(analysis: Analysis, choices: list[GroupChoice]) -> np.ndarray:
    removed = [analysis.groups[c.group].classes[c.removed] for c in choices]
    return np.sort(np.concatenate(removed)) if removed else np.zeros(0, dtype=np.int64)


def _keep_one_per_nonempty(analysis, removed: np.ndarray, scores, notes) -> np.ndarray:
    """A Split or Slice output must keep one channel: put back its best one."""
    removed_set = set(removed.tolist())
    for atoms in analysis.nonempty:
        classes = np.unique(analysis.class_of[atoms])
        if classes.size and all(int(c) in removed_set for c in classes):
            best = int(classes[np.argmax(scores[classes])])
            removed_set.discard(best)
            notes.append("kept one channel so that a split output is not empty")
    return np.array(sorted(removed_set), dtype=np.int64)


def _keep_minimums(analysis, removed: np.ndarray, scores, notes) -> np.ndarray:
    """A TopK over experts needs k of them: put back the best removed ones."""
    removed_set = set(removed.tolist())
    for atoms, count in analysis.minimums:
        classes = np.unique(analysis.class_of[atoms])
        gone = np.array([c for c in classes.tolist() if c in removed_set], dtype=np.int64)
        missing = count - (classes.size - gone.size)
        if missing > 0 and gone.size:
            best = gone[np.argsort(-scores[gone], kind="stable")[:missing]]
            removed_set -= set(best.tolist())
            notes.append(f"kept {best.size} more so that a top-{count} still has {count} to pick")
    return np.array(sorted(removed_set), dtype=np.int64)


def _choices_from(analysis: Analysis, removed_classes: np.ndarray) -> list[GroupChoice]:
    removed = np.isin(np.arange(analysis.group_of_class.shape[0]), removed_classes)
    choices = []
    for group in analysis.groups:
        mask = removed[group.classes]
        if mask.any():
            choices.append(
                GroupChoice(group.id, np.nonzero(mask)[0].tolist(), np.nonzero(~mask)[0].tolist())
            )
    return choices


def plan_from_json(analysis: Analysis, data: dict) -> Plan:
    """Re-apply the exact channel choices of an earlier report to this model."""
    check_weights(analysis)
    groups = data.get("groups", []) if isinstance(data, dict) else None
    options = data.get("options", {}) if isinstance(data, dict) else None
    if not isinstance(groups, list) or not isinstance(options, dict):
        raise GraphpruneError("the plan is not an object with a list of groups")
    by_name = {g.name: g for g in analysis.groups}
    choices = []
    for entry in groups:
        name, sources, channels, removed = _plan_entry(entry)
        group = by_name.get(name)
        if group is None or group.sources != sources:
            raise GraphpruneError(f"plan group '{name}' does not exist in this model")
        if group.channels != channels or not group.prunable:
            raise GraphpruneError(f"plan group '{name}' does not match this model")
        if removed and (removed[0] < 0 or removed[-1] >= group.channels):
            raise GraphpruneError(f"plan group '{name}' has out-of-range channels")
        if len(removed) == group.channels and group.kind != "blocks":
            raise GraphpruneError(f"plan group '{name}' removes every channel")
        needed = max((n for a, n in analysis.minimums if _touches(analysis, a, group)), default=0)
        if group.channels - len(removed) < needed:
            raise GraphpruneError(f"plan group '{name}' keeps fewer than its top-k's {needed}")
        kept = sorted(set(range(group.channels)) - set(removed))
        choices.append(GroupChoice(group.id, removed, kept))
    return Plan(choices, _removed_classes(analysis, choices), dict(options))


def _touches(analysis: Analysis, atoms: np.ndarray, group: Group) -> bool:
    return bool(np.isin(analysis.class_of[atoms], group.classes).any())


def _plan_entry(entry: object) -> tuple[str, list, int, list[int]]:
    """A plan group's name, sources, channel count and removed channels, checked."""
    values = entry if isinstance(entry, dict) else {}
    name, sources, channels, removed = (
        values.get(key) for key in ("name", "sources", "channels", "removed")
    )
    if not (
        isinstance(name, str)
        and isinstance(sources, list)
        and _is_int(channels)
        and isinstance(removed, list)
        and all(_is_int(index) for index in removed)
    ):
        raise GraphpruneError(
            f"plan group {str(entry)[:60]} lacks a name, sources, channels or removed channels"
        )
    return name, sources, channels, sorted(set(removed))


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)
