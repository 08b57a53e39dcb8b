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
    kinds = sorted(g.kind for g in analysis.prunable_groups)
    # per layer: one group of (KV) heads and one MLP width
    assert sizes == sorted([entry.kv_heads, entry.mlp] * entry.layers), sizes
    assert kinds == sorted(["heads", "mlp"] * entry.layers)
    plan = gp.plan(analysis, 0.3)
    assert all(c.removed for c in plan.choices) and len(plan.choices) == len(sizes)
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
    plan = gp.plan(
        analysis, gp.PlanOptions(ratio=0.5, only=("heads",), kind_ratios={"heads": 0.25})
    )
    removed = {analysis.groups[c.group].kind: len(c.removed) for c in plan.choices}
    assert removed == {"heads": 1}
    plan = gp.plan(analysis, gp.PlanOptions(ratio=0.5, kind_ratios={"heads": 0.25}))
    kinds = sorted((analysis.groups[c.group].kind, len(c.removed)) for c in plan.choices)
    assert kinds == [("heads", 1), ("heads", 1), ("mlp", 64), ("mlp", 64)]
    with pytest.raises(GraphpruneError, match="unknown group kind"):
        gp.plan(analysis, gp.PlanOptions(ratio=0.5, only=("width",)))


def test_hidden_size_matches_a_model_built_at_the_smaller_width():
    """LLaMA's residual stream pruned 64 -> 48 equals transformers' LlamaModel built with
    hidden_size 48 and loaded with the same kept indices (RMSNorm then averages over the
    kept channels, which is what the pruned graph computes)."""
    import torch
    from transformers import LlamaConfig, LlamaModel

    model = gp.load(cached("llama", "dynamo"))
    analysis = gp.analyze(model, approximate_norms=True, prune_outputs=True)
    plan = gp.plan(analysis, gp.PlanOptions(ratio=0.25, only=("hidden",)))
    (choice,) = plan.choices
    group = analysis.groups[choice.group]
    assert group.kind == "hidden" and group.approximations
    kept = torch.tensor(choice.kept)
    pruned = gp.prune(analysis, plan)

    torch.manual_seed(0)
    dense = TRANSFORMERS["llama"].build().model
    config = dense.config.to_dict() | {"hidden_size": len(choice.kept), "head_dim": 8}
    reference = LlamaModel(LlamaConfig(**config)).eval()
    weights = {}
    for key, value in dense.state_dict().items():
        if key.endswith(
            (
                "embed_tokens.weight",
                "q_proj.weight",
                "k_proj.weight",
                "v_proj.weight",
                "gate_proj.weight",
                "up_proj.weight",
            )
        ):
            value = value[:, kept]
        elif key.endswith(("o_proj.weight", "down_proj.weight", "norm.weight")):
            value = value[kept]
        weights[key] = value
    reference.load_state_dict(weights)
    feeds = feeds_for("llama", (1, 8))
    with torch.no_grad():
        expected = reference(input_ids=torch.from_numpy(feeds["input"])).last_hidden_state
    (actual,) = outputs(pruned, feeds)
    assert actual.shape == (1, 8, 48)
    assert_same_outputs([expected.numpy()], [actual])


def test_cli_hidden_size_only_when_outputs_may_change(tmp_path, capsys):
    import json

    from graphprune.cli import main

    model = str(cached("bert", "dynamo"))
    report = tmp_path / "r.json"
    common = ["--ratio", "0.25", "--only", "hidden", "--input-shape", "input=1,8", "--quiet"]
    assert main(["prune", model, "-o", str(tmp_path / "a.onnx"), *common]) == 0
    assert "pruned 0 of" in capsys.readouterr().out  # the hidden size reaches the output
    args = ["prune", model, "-o", str(tmp_path / "b.onnx"), *common, "--prune-outputs"]
    assert main([*args, "--report", str(report)]) == 0
    data = json.loads(report.read_text())
    assert data["validation"]["outputs"][0]["shape"] == [1, 8, 48]
    assert set(data["params_removed_by_kind"]) == {"hidden"}
    hidden = [g for g in data["groups"] if g["kind"] == "hidden"]
    assert hidden[0]["approximations"] and len(hidden[0]["removed"]) == 16
