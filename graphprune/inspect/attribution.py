"""Which coupled group each change of a pruned model came from.

graphprune records its plan in the pruned model's metadata ("graphprune.plan"). The
analysis of the original model knows every edit removal implies (the weight slices of
sources and consumers, the counts it sets) and the atoms each edit touches, so mapping
removed classes through those edits names the group(s) behind every edited node, exactly.
When the analysis is unavailable (it fails, or the original is not the model that was
pruned), a fallback attributes the plan's source nodes and, for every other changed node,
the pruned sources that feed it through channel-preserving ops.
"""

from __future__ import annotations

import json
from collections import defaultdict, deque

import numpy as np
import onnx

from ..core.analysis import Analysis
from ..core.rewrite import PLAN_METADATA_KEY
from ..errors import GraphpruneError
from .layers import ModelLayers


def recorded_plan(model: onnx.ModelProto) -> dict | None:
    """The plan graphprune recorded in a model it pruned, else None."""
    for prop in model.metadata_props:
        if prop.key == PLAN_METADATA_KEY:
            try:
                plan = json.loads(prop.value)
            except json.JSONDecodeError:
                return None
            return plan if isinstance(plan, dict) and "groups" in plan else None
    return None


def group_view(plan: dict) -> list[dict]:
    """One entry per planned group: channels before -> after and what was removed."""
    view = []
    for group in plan.get("groups", []):
        removed = sorted(int(i) for i in group.get("removed", []))
        channels = int(group.get("channels", 0))
        view.append({
            "name": group.get("name", ""),
            "sources": list(group.get("sources", [])),
            "channels": channels,
            "kept": channels - len(removed),
            "removed": removed,
            "layers": [],
        })  # fmt: skip
    return view


def attribute_with_analysis(analysis: Analysis, plan: dict) -> dict[str, list[str]]:
    """node name -> names of the groups whose removed channels edit it."""
    removed_class = np.zeros(analysis.class_of.max(initial=-1) + 1, dtype=bool)
    by_name = {group.name: group for group in analysis.groups}
    names = {}
    for entry in plan.get("groups", []):
        group = by_name.get(entry.get("name"))
        removed = [int(i) for i in entry.get("removed", [])]
        if group is None or not removed:
            continue
        if group.channels != int(entry.get("channels", -1)) or max(removed) >= group.channels:
            continue  # not the group that was planned: the models differ
        removed_class[group.classes[removed]] = True
        names[group.id] = group.name
    found: dict[str, set[str]] = defaultdict(set)

    def add(node: str, atoms: np.ndarray) -> None:
        classes = analysis.class_of[np.asarray(atoms).ravel()]
        for gid in np.unique(analysis.group_of_class[classes[removed_class[classes]]]):
            if int(gid) in names:
                found[node].add(names[int(gid)])

    for source, atoms in analysis.source_atoms.items():
        add(source, atoms)
    for edit in analysis.edits:
        node = getattr(edit, "node", None) or edit.target.node  # SetCount names a target
        add(node, edit.atoms)
    return {node: sorted(groups) for node, groups in sorted(found.items())}


def attribute_by_tracing(
    before: ModelLayers, plan: dict, changed: list[int]
) -> dict[str, list[str]]:
    """The fallback: plan sources own their groups; another changed node belongs to the
    pruned sources reached upstream from it before another weighted op stops the walk."""
    owner: dict[str, set[str]] = defaultdict(set)
    for entry in plan.get("groups", []):
        if entry.get("removed"):
            for source in entry.get("sources", []):
                owner[source].add(entry.get("name", source))
    found: dict[str, set[str]] = {n: set(g) for n, g in owner.items()}
    layers = before.layers
    for index in changed:
        layer = layers[index]
        if layer.name in owner:
            continue
        queue, seen = deque([index]), {index}
        while queue and len(seen) < 256:
            current = layers[queue.popleft()]
            for name in current.inputs:
                if not name or name in before.constants or name not in before.producer:
                    continue
                producer = before.producer[name][0]
                if producer in seen:
                    continue
                seen.add(producer)
                upstream = layers[producer]
                if upstream.name in owner:
                    found.setdefault(layer.name, set()).update(owner[upstream.name])
                elif upstream.out_channels is None:  # channel-preserving: keep walking
                    queue.append(producer)
    return {node: sorted(groups) for node, groups in sorted(found.items()) if groups}


def attribute(
    before: ModelLayers,
    plan: dict,
    changed: list[int],
    analysis: Analysis | None = None,
    analyze=None,
) -> tuple[dict[str, list[str]], str]:
    """(node -> group names, method): the analysis when given or computable, else tracing.

    `analyze` is a callable returning the analysis of `before.model`, so that callers
    who already hold one (the prune command) do not pay for a second."""
    if analysis is None and analyze is not None:
        try:
            analysis = analyze()
        except GraphpruneError:
            analysis = None
    traced = attribute_by_tracing(before, plan, changed)
    if analysis is not None:
        found = attribute_with_analysis(analysis, plan)
        if found or not any(g.get("removed") for g in plan.get("groups", [])):
            # Ops that only carry channels (activations, adds) have no edits: their
            # changed shapes come from the groups traced upstream.
            merged = {**{k: v for k, v in traced.items() if k not in found}, **found}
            return dict(sorted(merged.items())), "analysis"
    return traced, "tracing"
