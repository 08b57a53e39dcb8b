"""Transformers as exporters write them: attention heads (grouped-query included) and MLP
widths pruned in raw graphs, against the masking oracle, at several batch sizes and
sequence lengths (dynamic axes survive)."""

from __future__ import annotations

import numpy as np
import pytest
from oracle import assert_same_outputs, outputs

import graphprune as gp
from graphprune.errors import GraphpruneError
from models.transformers_zoo import TRANSFORMERS, VOCAB, cached

CASES = [(name, exporter) for name, entry in TRANSFORMERS.items() for exporter in entry.exporters]


def feeds_for(name: str, shape: tuple[int, ...]) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(5)
    if TRANSFORMERS[name].is_text:
        return {"input": rng.integers(0, VOCAB, shape).astype(np.int64)}
    return {"input": rng.standard_normal(shape).astype(np.float32)}


def other_shapes(name: str) -> list[tuple[int, ...]]:
    entry = TRANSFORMERS[name]
    if entry.is_text:
        return [(1, 8), (2, 5), (1, 13)]
    return [(1, 3, 32, 32), (3, 3, 32, 32)]


@pytest.mark.parametrize("name,exporter", CASES, ids=[f"{n}-{e}" for n, e in CASES])
def test_heads_and_mlp_prune_exactly(name, exporter):
    entry = TRANSFORMERS[name]
    model = gp.load(cached(name, exporter))
    analysis = gp.analyze(model)
    sizes = sorted(g.channels for g in analysis.prunable_groups)
    # Per layer: one group of (KV) heads and one MLP width.
    assert sizes == sorted([entry.kv_heads, entry.mlp] * entry.layers), sizes
    kinds = sorted(g.kind for g in analysis.prunable_groups)
    assert kinds == sorted(["heads", "mlp"] * entry.layers)
    plan = gp.plan(analysis, 0.3)
    assert all(c.removed for c in plan.choices) and len(plan.choices) == 2 * entry.layers
    pruned = gp.prune(analysis, plan)
    masked = gp.mask(analysis, plan)
    checked = 0
    for shape in other_shapes(name):
        feeds = feeds_for(name, shape)
        try:
            original_out = outputs(model, feeds)
        except GraphpruneError:
            continue  # the exporter specialised this axis; the original cannot run it either
        pruned_out = outputs(pruned, feeds)
        assert [o.shape for o in original_out] == [o.shape for o in pruned_out]
        assert_same_outputs(outputs(masked, feeds), pruned_out)
        checked += 1
    assert checked >= 2


def test_head_oracle_catches_a_wrong_head():
    model = gp.load(cached("bert", "dynamo"))
    analysis = gp.analyze(model)
    plan = gp.plan(analysis, 0.5)
    heads = next(c for c in plan.choices if analysis.groups[c.group].channels == 4)
    shifted = [(i + 1) % 4 for i in heads.removed]
    wrong = gp.plan_from_json(
        analysis,
        {
            "groups": [
                {
                    "name": analysis.groups[c.group].name,
                    "sources": analysis.groups[c.group].sources,
                    "channels": analysis.groups[c.group].channels,
                    "removed": shifted if c is heads else c.removed,
                }
                for c in plan.choices
            ]
        },
    )
    feeds = feeds_for("bert", (1, 8))
    with pytest.raises(AssertionError):
        assert_same_outputs(
            outputs(gp.mask(analysis, plan), feeds), outputs(gp.prune(analysis, wrong), feeds)
        )


def test_only_and_head_ratio_choose_what_goes():
    analysis = gp.analyze(gp.load(cached("bert", "classic")))
    plan = gp.plan(analysis, 0.5, only=["heads"], kind_ratios={"heads": 0.25})
    removed = {analysis.groups[c.group].kind: len(c.removed) for c in plan.choices}
    assert removed == {"heads": 1}
    plan = gp.plan(analysis, 0.5, kind_ratios={"heads": 0.25})
    kinds = sorted((analysis.groups[c.group].kind, len(c.removed)) for c in plan.choices)
    assert kinds == [("heads", 1), ("heads", 1), ("mlp", 64), ("mlp", 64)]
    with pytest.raises(GraphpruneError, match="unknown group kind"):
        gp.plan(analysis, 0.5, only=["hidden"])
