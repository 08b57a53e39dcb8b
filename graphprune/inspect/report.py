"""Human and machine summaries of an analysis and of a pruning run."""

from __future__ import annotations

import re
from collections import Counter
from typing import TypedDict

import numpy as np

from ..core.analysis import Analysis
from ..core.metrics import count_params
from ..core.rewrite import rewrite
from ..planning.plan import Plan


class _Group(TypedDict):
    id: int
    name: str
    sources: list[str]
    channels: int
    kind: str
    prunable: bool
    reasons: list[str]
    approximations: list[str]


class GroupRow(_Group, total=False):
    """One group in reports; `kept` and `removed` (positions) when there is a plan."""

    kept: list[int]
    removed: list[int]


def groups_json(analysis: Analysis, plan: Plan | None = None) -> list[GroupRow]:
    choices = {c.group: c for c in plan.choices} if plan else {}
    rows: list[GroupRow] = []
    for group in analysis.groups:
        row: GroupRow = {
            "id": group.id,
            "name": group.name,
            "sources": group.sources,
            "channels": group.channels,
            "kind": group.kind,
            "prunable": group.prunable,
            "reasons": [str(reason) for reason in group.reasons],
            "approximations": [str(note) for note in group.approximations],
        }
        if plan is not None:
            choice = choices.get(group.id)
            row["kept"] = choice.kept if choice else list(range(group.channels))
            row["removed"] = choice.removed if choice else []
        rows.append(row)
    return rows


def analysis_json(analysis: Analysis) -> dict:
    prunable = analysis.prunable_groups
    return {
        "nodes": len(analysis.view.nodes),
        "groups": len(analysis.groups),
        "prunable_groups": len(prunable),
        "prunable_channels": sum(g.channels for g in prunable),
        "total_channels": sum(g.channels for g in analysis.groups),
        "barriers": barrier_counts(analysis),
        "ops_without_rule": analysis.ops_without_rule,
        "group_list": groups_json(analysis),
    }


def barrier_counts(analysis: Analysis) -> dict[str, int]:
    """How many groups each kind of reason stops: the op, or the cause (without names)."""
    counts: Counter[str] = Counter()
    for group in analysis.groups:
        for reason in group.reasons:
            counts[reason.op or reason.message.split("'")[0].strip() or reason.message] += 1
    return dict(counts.most_common())


class _Barrier(TypedDict):
    reason: str
    groups: int
    channels: int


class BarrierRow(_Barrier, total=False):
    """One kind of barrier: `reason` (op and message, the first node's names), how many
    groups and channels it keeps, and the option that lifts it, when one does."""

    option: str


def barrier_rows(analysis: Analysis, limit: int = 5) -> list[BarrierRow]:
    """The barriers that keep the most groups, each group counted once per kind: reasons
    of one op and message (names in quotes aside) are one kind."""
    rows: dict[tuple, BarrierRow] = {}
    for group in analysis.groups:
        kinds = {}
        for reason in group.reasons:
            key = (reason.op, re.sub(r"'[^']*'", "''", reason.message), reason.option)
            kinds.setdefault(key, reason)
        for key, reason in kinds.items():
            text = reason.message if reason.op is None else f"{reason.op}: {reason.message}"
            row = rows.setdefault(key, BarrierRow(reason=text, groups=0, channels=0))
            if reason.option:
                row["option"] = reason.option
            row["groups"] += 1
            row["channels"] += group.channels
    ranked = sorted(rows.values(), key=lambda row: (-row["groups"], -row["channels"]))
    return ranked[:limit]


def analysis_text(analysis: Analysis) -> str:
    summary = analysis_json(analysis)
    lines = [
        f"{summary['nodes']} nodes, {summary['groups']} channel groups, "
        f"{summary['prunable_groups']} prunable "
        f"({summary['prunable_channels']} of {summary['total_channels']} channels)",
        *_without_rule_line(analysis.ops_without_rule),
        "",
        f"{'group':>5}  {'channels':>8}  {'kind':<8}  {'status':<8}  name / reason",
    ]
    for group in analysis.groups:
        status = "prunable" if group.prunable else "kept"
        lines.append(
            f"{group.id:>5}  {group.channels:>8}  {group.kind:<8}  {status:<8}  {group.name}"
        )
        for reason in group.reasons:
            lifted = f" ({reason.option} lifts it)" if reason.option else ""
            lines.append(f"{'':>37}  - {reason}{lifted}")
        for note in group.approximations:
            lines.append(f"{'':>37}  ~ approximate: {note}")
    return "\n".join(lines)


def _without_rule_line(ops: dict[str, int]) -> list[str]:
    """Ops no rule maps: channels that reach them stop, and layers among them (quantized
    or fused kernels) are not pruned at all, which no group shows."""
    if not ops:
        return []
    return ["ops without a channel rule: " + ", ".join(f"{op} ({n})" for op, n in ops.items())]


def params_removed_by_kind(analysis: Analysis, plan: Plan) -> dict[str, int]:
    """Parameters each kind of group (channels, mlp, heads, hidden) removes on its own:
    the model pruned with only that kind's choices, counted. Kinds interact where a weight
    loses rows to one kind and columns to another, so the parts may not add up to the
    total."""
    before = count_params(analysis.view.model)
    removed = {}
    for kind in sorted({analysis.groups[c.group].kind for c in plan.choices}):
        classes = [
            analysis.groups[c.group].classes[c.removed]
            for c in plan.choices
            if analysis.groups[c.group].kind == kind
        ]
        keep = ~np.isin(analysis.class_of, np.concatenate(classes))
        removed[kind] = before - count_params(rewrite(analysis, keep, weights=False))
    return removed
