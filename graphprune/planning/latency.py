"""Latency budgets: predict the pruned model's latency from a measured table
(`graphprune.runtime.profile`), plan to a target, then measure and correct.

The cost model has the interface of `budget.CostModel` (`total`, `cost(keep_atom)`), so
the budget's global ranking and bisection plan to a latency target unchanged. A profiled
layer costs its full-width time times, per shrinking axis, its curve at the kept width
over its curve at the full width (the axes are timed separately: a product, as the MACs
of a Conv are). The ops no table covers (the measured model minus the profiled layers)
scale with the kept activation volume of the profiled layers' outputs. The prediction is
scaled so that the full model costs exactly its measured latency.

As in HALP (Shen et al., NeurIPS 2022), channels are ranked by importance per unit of
latency: each group's normalised scores are divided by the latency its channels cost
(relative to the other groups), and widths are snapped to the alignment where the
table shows a cliff (`snap_steps`). A dropped residual unit (kind "blocks") takes its
branch's layers along: they cost nothing, and their output volume leaves the rest's share,
so `--drop-blocks` and a latency target plan depth and width together.
The prediction is a model; the target is a measurement: `planning.target` closes the loop.
"""

from __future__ import annotations

import math

import numpy as np

from ..core.analysis import Analysis
from ..runtime.layers import layer_axes
from ..runtime.profile import ALIGNMENTS, AxisCurve, LatencyTable
from .budget import block_owners

# A width off a multiple of `a` that costs more than this over the aligned curve is a cliff.
CLIFF = 1.05
# Snap only where it takes at most a quarter of the group's channels to reach the multiple.
SNAP_SHARE = 4


class LatencyCostModel:
    """Predicted latency (ms) of the model for a set of kept atoms."""

    def __init__(self, analysis: Analysis, table: LatencyTable) -> None:
        self.layers: list[tuple[float, list[tuple[np.ndarray, AxisCurve]]]] = []
        self.volume: list[tuple[int, np.ndarray | None]] = []
        # Per layer, the atoms of the residual units whose removal takes it along.
        owners = block_owners(analysis)
        self.owners: list[list[np.ndarray]] = []
        for name, roles in sorted(layer_axes(analysis).items()):
            timing = table.layers.get(name)
            if timing is None:
                continue
            axes = [(roles[r], curve) for r, curve in sorted(timing.axes.items()) if r in roles]
            self.layers.append((timing.full_ms, axes))
            self.volume.append((timing.output_elements, roles.get("out")))
            self.owners.append(owners.get(name, []))
        profiled = sum(full for full, _ in self.layers)
        self.rest = max(table.measured_ms - profiled, 0.0)
        self.scale = table.measured_ms / (profiled + self.rest) if profiled + self.rest else 1.0
        self.total = table.measured_ms

    def cost(self, keep_atom: np.ndarray) -> float:
        present = [all(keep_atom[atoms].all() for atoms in owned) for owned in self.owners]
        layers = 0.0
        for (full, axes), kept_layer in zip(self.layers, present, strict=True):
            if not kept_layer:
                continue
            factor = 1.0
            for atoms, curve in axes:
                kept = int(keep_atom[atoms].sum())
                factor *= curve.at(max(kept, 1)) / curve.at(curve.channels)
            layers += full * factor
        elements = sum(size for size, _ in self.volume)
        kept_volume = sum(
            size * (float(keep_atom[atoms].mean()) if atoms is not None else 1.0)
            for (size, atoms), kept_layer in zip(self.volume, present, strict=True)
            if kept_layer
        )
        fraction = kept_volume / elements if elements else 1.0
        return self.scale * (layers + self.rest * fraction)

    def curves_by_group(self, analysis: Analysis) -> dict[int, list[AxisCurve]]:
        found: dict[int, list[AxisCurve]] = {}
        for _, axes in self.layers:
            for atoms, curve in axes:
                groups = np.unique(analysis.group_of_class[analysis.class_of[atoms]])
                for gid in groups[groups >= 0]:
                    found.setdefault(int(gid), []).append(curve)
        return found


def snap_steps(analysis: Analysis, model: LatencyCostModel, round_to: int) -> dict[int, int]:
    """Per group, the multiple its kept count is rounded to: the smallest alignment in
    1, 8, 16, 32, 64 at and above which none of its layers' curves shows a cliff (a width
    of a smaller alignment costs over CLIFF x the aligned curve), combined with
    `round_to`; only where it rounds away at most a quarter of the group."""
    steps: dict[int, int] = {}
    for gid, curves in model.curves_by_group(analysis).items():
        needed = 1
        for curve in curves:
            for alignment in sorted(ALIGNMENTS):
                if all(curve.penalty.get(a, 1.0) <= CLIFF for a in ALIGNMENTS if a >= alignment):
                    needed = max(needed, alignment)
                    break
        if needed * SNAP_SHARE > analysis.groups[gid].channels:
            needed = 1
        steps[gid] = math.lcm(round_to, needed)
    return steps


def cost_weights(analysis: Analysis, model: LatencyCostModel, group_ids: list[int]) -> dict:
    """Per group, the predicted latency one of its channels costs (removing a quarter of
    it at once, so that a step of the curve shows), relative to the mean over groups."""
    keep_all = np.ones(analysis.class_of.shape[0], dtype=bool)
    full = model.cost(keep_all)
    weights = {}
    for gid in group_ids:
        group = analysis.groups[gid]
        removed = group.classes[: max(1, group.channels // 4)]
        keep = keep_all & ~np.isin(analysis.class_of, removed)
        weights[gid] = max(full - model.cost(keep), 0.0) / removed.size
    positive = [w for w in weights.values() if w > 0]
    mean = float(np.mean(positive)) if positive else 1.0
    floor = 1e-3 * mean  # a group no table prices goes last, never never
    return {gid: max(w, floor) / mean for gid, w in weights.items()}
