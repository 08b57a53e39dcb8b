"""Depth: residual blocks y = x + f(x) dropped by rewiring (y := x), against the oracle
(the original with f's output zeroed), on real exports of both torch exporters: ResNet,
MobileNetV2's inverted residuals, ConvNeXt, and transformers (pre- and post-norm)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
from oracle import GraphBuilder, assert_same_outputs, outputs

import graphprune as gp
from graphprune.cli import main
from graphprune.core.channels import Bypass
from graphprune.core.metrics import count_macs, count_params
from graphprune.core.rewrite import rewrite
from graphprune.planning.budget import CostModel
from graphprune.planning.depth import block_units, unit_savings
from graphprune.runtime.inputs import input_shapes, random_inputs
from models.export import cached as zoo_model
from models.transformers_zoo import TRANSFORMERS, VOCAB
from models.transformers_zoo import cached as transformer_model

EXAMPLE = Path(__file__).parent.parent / "models" / "example" / "resnet_tiny.onnx"

# Identity residual blocks (blocks with a downsampling shortcut add two branches: not one).
CNNS = {"resnet18": 5, "mobilenetv2": 4, "convnext": 5}
CNN_CASES = [(name, exporter) for name in CNNS for exporter in ("classic", "dynamo")]
TEXT_CASES = [
    (name, exporter)
    for name in ("bert", "llama", "gpt2", "vit")
    for exporter in TRANSFORMERS[name].exporters
]


def check_drop(model, analysis, options: gp.PlanOptions, feeds_list):
    """Prune with `options`, compare with the oracle on every feed; returns the pruned."""
    plan = gp.plan(analysis, options)
    pruned = gp.prune(analysis, plan)
    masked = gp.mask(analysis, plan)
    for feeds in feeds_list:
        assert_same_outputs(outputs(masked, feeds), outputs(pruned, feeds))
    assert len(pruned.graph.node) < len(model.graph.node)
    return plan, pruned


@pytest.mark.parametrize("name,exporter", CNN_CASES, ids=[f"{n}-{e}" for n, e in CNN_CASES])
def test_cnn_blocks_drop_exactly(name, exporter):
    model = gp.load(zoo_model(name, exporter))
    analysis = gp.analyze(model, blocks="layer")
    units = [g for g in analysis.groups if g.kind == "blocks"]
    assert len(units) == CNNS[name] and all(g.prunable and len(g.sources) == 1 for g in units)
    feeds = [random_inputs(model, input_shapes(model), seed=1)]
    options = gp.PlanOptions(drop_blocks=2, block_criterion="magnitude")
    plan, _ = check_drop(model, analysis, options, feeds)
    assert sum(1 for c in plan.choices if analysis.groups[c.group].kind == "blocks") == 2
    # Depth and width together: channels of the kept blocks go too, still exactly.
    both = dataclasses.replace(options, ratio=0.3, block_criterion="random")
    check_drop(model, analysis, both, feeds)


def text_feeds(name: str) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(3)
    if TRANSFORMERS[name].is_text:
        return [{"input": rng.integers(0, VOCAB, (1, 8)).astype(np.int64)}]
    return [{"input": rng.standard_normal((1, 3, 32, 32)).astype(np.float32)}]


@pytest.mark.parametrize("name,exporter", TEXT_CASES, ids=[f"{n}-{e}" for n, e in TEXT_CASES])
def test_transformer_layers_drop_exactly(name, exporter):
    entry = TRANSFORMERS[name]
    model = gp.load(transformer_model(name, exporter))
    analysis = gp.analyze(model, blocks="layer")
    units = [g for g in analysis.groups if g.kind == "blocks"]
    # A layer is its attention block and its MLP block, found by their period.
    assert [len(g.sources) for g in units] == [2] * entry.layers
    # One layer and 30% of the heads and MLP widths of the others.
    options = gp.PlanOptions(drop_blocks=1, block_criterion="random", ratio=0.3)
    plan, pruned = check_drop(model, analysis, options, text_feeds(name))
    dropped = next(c for c in plan.choices if analysis.groups[c.group].kind == "blocks")
    gone = {n for add in analysis.groups[dropped.group].sources for n in analysis.blocks[add].owned}
    left = {node.name for node in pruned.graph.node}
    assert gone and not gone & left
    # Width groups of the dropped layer are not pruned (or counted) as well.
    widths = [analysis.groups[c.group] for c in plan.choices]
    assert all(g.kind == "blocks" or not gone.issuperset(g.sources) for g in widths)
    assert any(g.kind != "blocks" for g in widths)
    # Each branch on its own: an attention block alone goes too.
    branches = gp.analyze(model, blocks="branch")
    assert sum(g.kind == "blocks" for g in branches.groups) == 2 * entry.layers
    check_drop(model, branches, gp.PlanOptions(drop_blocks=1, block_criterion="magnitude"),
               text_feeds(name))  # fmt: skip


def test_post_norm_keeps_its_norm():
    """BERT's post-norm block LayerNorm(x + f(x)) becomes LayerNorm(x): f zeroed."""
    model = gp.load(transformer_model("bert", "classic"))
    analysis = gp.analyze(model, blocks="layer")
    plan = gp.plan(analysis, gp.PlanOptions(drop_blocks=1, block_criterion="magnitude"))
    pruned = gp.prune(analysis, plan)
    norms = [n for n in model.graph.node if n.op_type == "LayerNormalization"]
    kept = [n for n in pruned.graph.node if n.op_type == "LayerNormalization"]
    assert norms and len(kept) == len(norms)


def test_oracle_catches_a_wrong_rewiring():
    """y := f(x) instead of y := x, or another unit dropped than the one the oracle zeroes,
    make the pruned model differ from the oracle."""
    model = gp.load(zoo_model("resnet18", "classic"))
    analysis = gp.analyze(model, blocks="layer")
    plan = gp.plan(analysis, gp.PlanOptions(drop_blocks=1, block_criterion="magnitude"))
    feeds = random_inputs(model, input_shapes(model), seed=1)
    expected = outputs(gp.mask(analysis, plan), feeds)
    assert_same_outputs(expected, outputs(gp.prune(analysis, plan), feeds))
    swapped = [
        Bypass(e.node, 1 - e.input_index, e.atoms) if isinstance(e, Bypass) else e
        for e in analysis.edits
    ]
    wrong = rewrite(dataclasses.replace(analysis, edits=swapped), plan.keep_atom(analysis))
    with pytest.raises(AssertionError):
        assert_same_outputs(expected, outputs(wrong, feeds))
    units = [g for g in analysis.groups if g.kind == "blocks"]
    dropped = next(c.group for c in plan.choices)
    other = next(g for g in units if g.id != dropped)
    record = {"groups": [{"name": other.name, "sources": other.sources, "channels": 1,
                          "removed": [0]}]}  # fmt: skip
    elsewhere = gp.prune(analysis, gp.plan_from_json(analysis, record))
    with pytest.raises(AssertionError):
        assert_same_outputs(expected, outputs(elsewhere, feeds))


def residual_graph(side_output: bool = False, broadcast: bool = False):
    """y = x + (x @ W) on [N, 4] (W given), optionally with the branch as a model output or
    a branch of shape [1, 4] that x does not match (x broadcast)."""
    b = GraphBuilder()
    x = b.input([1, 4] if broadcast else [3, 4])
    w = b.const(np.array([[0, 1, 0, 0], [-1, 0, 0, 0], [0, 0, 0, 1], [0, 0, -1, 0]], np.float32))
    branch = b.op("MatMul", [x, w])
    if broadcast:
        branch = b.op("Expand", [branch, b.const(np.array([3, 4], np.int64))])
        x, branch = branch, x  # Add(wide, narrow): the narrow input is not y's shape
    y = b.op("Add", [x, branch])
    b.output(y)
    if side_output:
        b.output(branch)
    return b.model()


def test_branch_as_model_output_is_not_droppable_and_broadcast_is_no_block():
    analysis = gp.analyze(residual_graph(side_output=True), blocks="layer")
    (unit,) = [g for g in analysis.groups if g.kind == "blocks"]
    assert not unit.prunable and "model output" in str(unit.reasons[0])
    assert not gp.analyze(residual_graph(broadcast=True), blocks="layer").blocks


def test_block_influence_is_one_minus_cosine():
    """W rotates each pair of features by 90 degrees: y = x + Wx makes a 45 degree angle
    with x at every row, so Block Influence is exactly 1 - cos(45 degrees)."""
    model = residual_graph()
    analysis = gp.analyze(model, blocks="layer")
    stats = gp.calibrate(analysis, gp.CalibrationData(random=10, shapes={"x": (4,)}),
                         blocks=True, batch=4)  # fmt: skip
    (score,) = stats.block_influence.values()
    assert score == pytest.approx(1 - np.sqrt(0.5), abs=1e-6)
    assert stats.samples == 10
    (unit,) = block_units(analysis, "influence", stats=stats)
    assert unit.score == pytest.approx(score)


def plan_drops(plan: gp.Plan, group: int) -> bool:
    return any(c.group == group and c.removed for c in plan.choices)


def test_budget_counts_dropped_blocks():
    model = gp.load(zoo_model("resnet18", "classic"))
    analysis = gp.analyze(model, blocks="layer")
    plan = gp.plan(analysis, gp.PlanOptions(drop_blocks=2, block_criterion="magnitude"))
    shapes = input_shapes(model)
    for metric in ("macs", "params"):
        estimated = CostModel(analysis, metric).cost(plan.keep_atom(analysis))
        pruned = gp.prune(analysis, plan)
        measured = count_macs(pruned, shapes) if metric == "macs" else count_params(pruned)
        assert estimated == pytest.approx(measured, rel=1e-6)
        # What each unit removes alone adds up (the units share no node).
        dropped = [u for u in block_units(analysis, "magnitude") if plan_drops(plan, u.group)]
        saved = sum(unit_savings(analysis, dropped, metric).values())
        total = count_macs(model, shapes) if metric == "macs" else count_params(model)
        assert saved == pytest.approx(total - measured, rel=1e-6)
    budget = gp.PlanOptions(
        drop_blocks=1, block_criterion="magnitude", budget=gp.Budget("macs", 0.5)
    )
    plan = gp.plan(analysis, budget)
    assert count_macs(gp.prune(analysis, plan), shapes) <= 0.5 * count_macs(model, shapes) * 1.01


def test_cli_drop_blocks(tmp_path, capsys):
    report = tmp_path / "r.json"
    out = tmp_path / "out.onnx"
    args = ["prune", str(EXAMPLE), "-o", str(out), "--quiet", "--report", str(report)]
    assert main([*args, "--drop-blocks", "1", "--block-criterion", "magnitude"]) == 0
    rows = json.loads(report.read_text())["blocks"]
    assert sum(row["dropped"] for row in rows) == 1 and len(rows) >= 2
    first = out.read_bytes()
    assert main([*args, "--drop-blocks", "1", "--block-criterion", "magnitude"]) == 0
    assert out.read_bytes() == first  # deterministic
    assert main([*args, "--drop-blocks", "-1"]) == 1
    assert main([*args, "--drop-blocks", str(len(rows)), "--block-criterion", "magnitude"]) == 1
    assert "at least one must stay" in capsys.readouterr().err
    assert main([*args, "--drop-blocks", "1"]) == 1  # influence needs calibration data
    assert "calibration data" in capsys.readouterr().err
    assert main([*args, "--drop-blocks", "1", "--calib-random", "4"]) == 0
    # Depth with calibrated width and compensation: the compensated model is analysed again.
    width = ["--ratio", "0.3", "--criterion", "flap", "--compensate", "lsq"]
    assert main([*args, "--drop-blocks", "1", "--calib-random", "4", *width]) == 0
    # The report's plan re-applies the same depth.
    again = tmp_path / "again.onnx"
    assert main(["prune", str(EXAMPLE), "-o", str(again), "--quiet", "--plan", str(report)]) == 0
    assert len(gp.load(again).graph.node) == len(gp.load(out).graph.node)
    assert main(["analyze", str(EXAMPLE), "--blocks"]) == 0
    assert "blocks" in capsys.readouterr().out
