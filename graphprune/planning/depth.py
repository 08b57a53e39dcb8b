"""Choosing residual units to drop (depth): the groups of kind "blocks".

Each unit is scored, lowest first to go:
- "influence": Block Influence 1 - cos(x, y) from calibration (ShortGPT, Men et al. 2024;
  `graphprune.posttrain.influence`): a unit that barely changes its input matters least;
- "magnitude": the Frobenius norm of the weights that write the branch's output (the last
  weighted ops before the residual Add), summed over the unit's blocks. Data-free and a
  weak proxy: a small output projection may still carry what later layers need;
- "random": seeded, the baseline.

`block_units` is the planning interface (which units exist, the nodes each takes with
it, its score); `unit_savings` what each removes, from `graphprune.planning.budget.CostModel`,
which counts a dropped unit's nodes and weights as gone.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..core.analysis import Analysis
from ..core.blocks import WEIGHTED_OPS
from ..errors import GraphpruneError
from ..posttrain.statistics import CalibrationStats
from .budget import CostModel

BLOCK_CRITERIA = ("influence", "magnitude", "random")


@dataclass(frozen=True)
class BlockUnit:
    """One group of kind "blocks": its residual Adds, the nodes that go with it (the
    branches' nodes nothing else reads), whether it may go, and its score."""

    group: int
    name: str
    adds: tuple[str, ...]
    nodes: frozenset[str]
    prunable: bool
    score: float


def block_units(
    analysis: Analysis,
    criterion: str = "magnitude",
    *,
    stats: CalibrationStats | None = None,
    seed: int = 0,
) -> list[BlockUnit]:
    """Every block group of the analysis, in graph order, scored by `criterion`."""
    if criterion not in BLOCK_CRITERIA:
        raise GraphpruneError(
            f"unknown block criterion {criterion!r} (choose from {', '.join(BLOCK_CRITERIA)})"
        )
    groups = [g for g in analysis.groups if g.kind == "blocks"]
    if criterion == "influence":
        found = {} if stats is None else stats.block_influence
        missing = [g.name for g in groups if g.name not in found]
        if missing:
            raise GraphpruneError(
                "block criterion 'influence' needs calibration data (--calib or "
                "--calib-random N); --block-criterion magnitude needs none"
            )
        scores = [found[g.name] for g in groups]
    elif criterion == "random":
        scores = np.random.default_rng(seed).random(len(groups)).tolist()
    else:
        scores = [sum(_output_norm(analysis, add) for add in g.sources) for g in groups]
    return [
        BlockUnit(
            group=g.id,
            name=g.name,
            adds=tuple(g.sources),
            nodes=frozenset(n for add in g.sources for n in analysis.blocks[add].owned),
            prunable=g.prunable,
            score=float(score),
        )
        for g, score in zip(groups, scores, strict=True)
    ]


def choose_units(units: list[BlockUnit], count: int, excluded: set[int]) -> list[BlockUnit]:
    """The `count` lowest-scored prunable units (ties: graph order), never all of them."""
    candidates = [u for u in units if u.prunable and u.group not in excluded]
    if not units and count:
        raise GraphpruneError(
            f"--drop-blocks {count}: no residual blocks in this analysis "
            '(gp.analyze(model, blocks="layer") looks for them)'
        )
    if count >= len(candidates) and count:
        raise GraphpruneError(
            f"--drop-blocks {count}: {len(candidates)} of the model's {len(units)} residual "
            "units may go (not ignored, no barrier) and at least one must stay"
        )
    ranked = sorted(candidates, key=lambda u: (u.score, u.group))
    return sorted(ranked[:count], key=lambda u: u.group)


def unit_savings(
    analysis: Analysis, units: list[BlockUnit], metric: str, shapes=None
) -> dict[int, float]:
    """What dropping each unit alone removes (group id -> MACs or parameters), as the
    budget estimates it (`CostModel`): for planners that weigh depth against width."""
    model = CostModel(analysis, metric, shapes)
    keep = np.ones(analysis.class_of.shape[0], dtype=bool)
    full = model.cost(keep)
    savings = {}
    for unit in units:
        without = keep & ~np.isin(analysis.class_of, analysis.groups[unit.group].classes)
        savings[unit.group] = full - model.cost(without)
    return savings


def _output_norm(analysis: Analysis, add: str) -> float:
    """Frobenius norm of the weights of the weighted ops nearest the Add on the branch."""
    view, block = analysis.view, analysis.blocks[add]
    inside = set(block.nodes)
    stack = [view.producer(view.nodes[add].input[block.branch])]
    seen: set[str] = set()
    total = 0.0
    while stack:
        node = stack.pop()
        if node is None or node.name in seen or node.name not in inside:
            continue
        seen.add(node.name)
        weight = next((n for n in node.input[:2] if n and view.is_constant(n)), None)
        if node.op_type in WEIGHTED_OPS and weight is not None:
            total += float(np.linalg.norm(np.asarray(view.constant(weight), dtype=np.float64)))
            continue
        stack.extend(view.producer(name) for name in node.input if name)
    return total
