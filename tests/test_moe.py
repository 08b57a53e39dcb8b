"""Mixture-of-experts: experts go with their router rows and expert-table rows, checked
against the -inf oracle (the original whose router can never pick them), on real exports
of transformers' Qwen2-MoE, Qwen3-MoE and Mixtral (both exporters where they export) and
on onnxruntime's fused com.microsoft.MoE."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from oracle import GraphBuilder, assert_same_outputs, outputs

import graphprune as gp
from graphprune.core.channels import MaskInput, SliceConstant
from graphprune.errors import GraphpruneError
from models.moe_zoo import HIDDEN, MOE, TOP_K, VOCAB, cached, ort_moe

EXPORTS = [(name, exporter) for name, entry in MOE.items() for exporter in entry.exporters]


def feeds(model, shape: tuple[int, int], seed: int = 5) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    name = model.graph.input[0].name
    if model.graph.input[0].type.tensor_type.elem_type == 7:  # token ids
        return {name: rng.integers(0, VOCAB, shape).astype(np.int64)}
    return {name: rng.standard_normal((*shape, HIDDEN)[: len(shape) + 1]).astype(np.float32)}


def check(analysis, plan, model, shapes) -> None:
    pruned, masked = gp.prune(analysis, plan), gp.mask(analysis, plan)
    for shape in shapes:
        inputs = feeds(model, shape)
        assert_same_outputs(outputs(masked, inputs), outputs(pruned, inputs))


@pytest.mark.parametrize(("name", "exporter"), EXPORTS)
def test_experts_prune_exactly(name, exporter):
    model = gp.load(cached(name, exporter))
    analysis = gp.analyze(model)
    experts = [g for g in analysis.groups if g.kind == "experts"]
    layers = 1 if MOE[name].block else 2
    assert len(experts) == layers and all(g.prunable and g.channels == 8 for g in experts)
    plan = gp.plan(analysis, gp.PlanOptions(ratio=0.25, only=("experts",)))
    assert sorted(len(c.removed) for c in plan.choices) == [2] * layers
    pruned = gp.prune(analysis, plan)
    tables = [t for t in pruned.graph.initializer if len(t.dims) == 3]
    assert tables and all(t.dims[0] == 6 for t in tables)  # every expert table lost 2 rows
    # The dynamo exporter specialises the language models' batch to the example's 1.
    check(analysis, plan, model, [(2, 8) if MOE[name].block else (1, 8), (1, 5)])


BLOCKS = [(n, e) for n, e in EXPORTS if MOE[n].block]


@pytest.mark.parametrize(("name", "exporter"), BLOCKS)
def test_expert_widths_and_experts_together(name, exporter):
    """The expert MLP width (rows of the [E, 2I, H] gate-up table, columns of the
    [E, H, I] down table, for every expert) goes with the experts and the rest."""
    model = gp.load(cached(name, exporter))
    analysis = gp.analyze(model)
    widths = [g for g in analysis.groups if g.kind == "mlp" and g.prunable and g.channels == 16]
    assert len(widths) == 1
    plan = gp.plan(analysis, 0.5)
    pruned = gp.prune(analysis, plan)
    tables = sorted(list(t.dims) for t in pruned.graph.initializer if len(t.dims) == 3)
    assert tables == [[4, 16, HIDDEN], [4, HIDDEN, 8]]
    check(analysis, plan, model, [(2, 8)])
    inputs = feeds(model, (2, 8))
    shifted = gp.plan_from_json(analysis, _shifted(plan.to_json(analysis), widths[0].name))
    with pytest.raises(AssertionError):
        assert_same_outputs(
            outputs(gp.mask(analysis, plan), inputs), outputs(gp.prune(analysis, shifted), inputs)
        )


def test_wrong_expert_slice_fails_the_oracle():
    model = gp.load(cached("qwen2_moe_block", "dynamo"))
    analysis = gp.analyze(model)
    plan = gp.plan(analysis, gp.PlanOptions(ratio=0.25, only=("experts",)))
    inputs = feeds(model, (2, 8))
    expected = outputs(gp.mask(analysis, plan), inputs)
    assert_same_outputs(expected, outputs(gp.prune(analysis, plan), inputs))
    # A table that keeps the wrong experts' rows (the router still right) is caught.
    tables = [
        i for i, e in enumerate(analysis.edits)
        if isinstance(e, SliceConstant) and e.axis == 0
        and analysis.view.nodes[e.node].op_type == "GatherND"
    ]  # fmt: skip
    assert len(tables) == 2
    wrong = list(analysis.edits)
    wrong[tables[0]] = dataclasses.replace(
        wrong[tables[0]], atoms=np.roll(wrong[tables[0]].atoms, 1)
    )
    with pytest.raises(AssertionError):
        assert_same_outputs(
            expected, outputs(gp.prune(dataclasses.replace(analysis, edits=wrong), plan), inputs)
        )
    # Zeroing instead of -inf is not the oracle of expert removal: routing changes.
    zeroed = [
        dataclasses.replace(e, fill=0.0) if isinstance(e, MaskInput) else e for e in analysis.edits
    ]
    with pytest.raises(AssertionError):
        assert_same_outputs(
            outputs(gp.mask(dataclasses.replace(analysis, edits=zeroed), plan), inputs), expected
        )


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"activation": "swiglu", "fusion": 1},
        {"activation": "relu", "biases": False, "normalize_routing": 0, "k": 1},
    ],
)
def test_onnxruntime_moe_op_experts_and_widths(options):
    model = gp.load(ort_moe(**options))
    analysis = gp.analyze(model)
    kinds = sorted((g.kind, g.channels, g.prunable) for g in analysis.groups)
    assert kinds == [("experts", 8, True), ("mlp", 16, True)]
    plan = gp.plan(analysis, 0.5)
    assert sorted(len(c.removed) for c in plan.choices) == [4, 8]
    pruned = gp.prune(analysis, plan)
    shapes = {t.name: list(t.dims) for t in pruned.graph.initializer}
    rows = 16 if options.get("fusion") else 8
    assert shapes["fc1"] == [4, rows, HIDDEN] and shapes["fc2"] == [4, HIDDEN, 8]
    assert shapes["router"] == [4, HIDDEN]
    inputs = {"x": np.random.default_rng(2).standard_normal((12, HIDDEN)).astype(np.float32)}
    expected = outputs(gp.mask(analysis, plan), inputs)
    assert_same_outputs(expected, outputs(pruned, inputs))
    shifted = gp.plan_from_json(analysis, _shifted(plan.to_json(analysis), "moe"))
    with pytest.raises(AssertionError):
        assert_same_outputs(expected, outputs(gp.prune(analysis, shifted), inputs))


def test_onnxruntime_moe_op_fed_by_a_matmul_keeps_its_experts():
    """The MoE's input straight from a MatMul: its columns (the hidden size) stop at the
    MoE, the experts and expert width prune exactly all the same (FINDINGS, third round)."""
    model = gp.load(ort_moe(projected=True))
    analysis = gp.analyze(model)
    kinds = sorted((g.kind, g.channels, g.prunable) for g in analysis.groups)
    assert ("experts", 8, True) in kinds and ("mlp", 16, True) in kinds
    hidden = [g for g in analysis.groups if not g.prunable]
    assert len(hidden) == 1 and "hidden size not mapped" in str(hidden[0].reasons[0])
    plan = gp.plan(analysis, 0.5)
    pruned = gp.prune(analysis, plan)
    assert {t.name: list(t.dims) for t in pruned.graph.initializer}["fc2"] == [4, HIDDEN, 8]
    inputs = {"x": np.random.default_rng(3).standard_normal((12, HIDDEN)).astype(np.float32)}
    expected = outputs(gp.mask(analysis, plan), inputs)
    assert_same_outputs(expected, outputs(pruned, inputs))
    shifted = gp.plan_from_json(analysis, _shifted(plan.to_json(analysis), "moe"))
    with pytest.raises(AssertionError):
        assert_same_outputs(expected, outputs(gp.prune(analysis, shifted), inputs))


def _shifted(plan: dict, group: str) -> dict:
    """The plan with one group's removed channels moved by one (a wrong slice)."""
    for entry in plan["groups"]:
        if entry["name"] == group:
            entry["removed"] = sorted((i + 1) % entry["channels"] for i in entry["removed"])
    return plan


def test_top_k_experts_always_stay():
    analysis = gp.analyze(gp.load(cached("mixtral_block", "classic")))
    plan = gp.plan(analysis, gp.PlanOptions(ratio=0.95, only=("experts",)))
    assert [len(c.kept) for c in plan.choices] == [TOP_K]
    assert any("top-2" in note for note in plan.notes)
    data = plan.to_json(analysis)
    data["groups"][0]["removed"] = list(range(7))
    with pytest.raises(GraphpruneError, match="fewer than its top-k's 2"):
        gp.plan_from_json(analysis, data)


def test_softmax_over_channels_outside_a_router_stays_a_barrier():
    g = GraphBuilder()
    x = g.input([4, 16])
    logits = g.op("Gemm", [x, g.weight(8, 16)], transB=1)
    g.output(g.op("Softmax", [logits], axis=-1))
    analysis = gp.analyze(gp.load(g.model()))
    assert "normalizes over the channel axis" in str(analysis.groups[0].reasons[0])


@pytest.mark.parametrize(
    ("use", "reason"),
    [
        (lambda g, x, i: g.op("Cast", [i], to=1), "cast to a non-integer type"),
        (lambda g, x, i: g.op("Gather", [x, i], axis=1), "gathers from a computed tensor"),
        (
            lambda g, x, i: g.op(
                "OneHot", [i, g.const(np.array([8])), g.const(np.array([0.0, 1.0], np.float32))]
            ),
            "expert indices (a TopK over channels) are used here",
        ),
    ],
)
def test_expert_indices_used_otherwise_are_a_barrier(use, reason):
    g = GraphBuilder()
    x = g.input([4, 16])
    probs = g.op("Softmax", [g.op("Gemm", [x, g.weight(8, 16)], transB=1)], axis=-1)
    indices = g.op("TopK", [probs, g.const(np.array([2]))], outputs=2, axis=-1)[1]
    g.output(use(g, x, indices))
    analysis = gp.analyze(gp.load(g.model()))
    assert reason in str(analysis.groups[0].reasons[0])


@pytest.mark.parametrize("ratio", [["--ratio", "0.5"], []], ids=["with-ratio", "alone"])
def test_cli_only_experts(tmp_path, ratio):
    """`--expert-ratio` is a target by itself (README: `--only experts --expert-ratio R`)."""
    import json

    from graphprune.cli import main

    report = tmp_path / "report.json"
    code = main([
        "prune", str(cached("qwen3_moe", "dynamo")), "-o", str(tmp_path / "out.onnx"),
        *ratio, "--expert-ratio", "0.25", "--only", "experts", "--report", str(report),
    ])  # fmt: skip
    assert code == 0
    data = json.loads(report.read_text())
    removed = [g for g in data["groups"] if g.get("removed")]
    assert len(removed) == 2 and all(len(g["removed"]) == 2 for g in removed)


@pytest.mark.parametrize("exporter", ["dynamo", "classic"])
def test_calibrated_expert_scores_are_easy_ep(tmp_path, exporter):
    """Routing frequency x gate x output norm, recomputed in torch from the block itself."""
    import torch

    from models.moe_zoo import build

    x = np.random.default_rng(4).standard_normal((6, 5, HIDDEN)).astype(np.float32)
    np.savez(tmp_path / "calib.npz", input=x)
    analysis = gp.analyze(gp.load(cached("qwen2_moe_block", exporter)))
    stats = gp.calibrate(analysis, gp.CalibrationData(path=str(tmp_path / "calib.npz")))
    assert len(stats.taps) == 1 and stats.taps[0].rows is not None
    block = build("qwen2_moe_block").block
    with torch.no_grad():
        tokens = torch.from_numpy(x).reshape(-1, HIDDEN)
        probs = torch.softmax(tokens @ block.gate.weight.T, dim=-1)
        gate, picks = torch.topk(probs, TOP_K, dim=-1)
        expected = np.zeros(8)
        for e in range(8):
            up = tokens @ block.experts.gate_up_proj[e].T
            g, u = up.chunk(2, dim=-1)
            out = (torch.nn.functional.silu(g) * u) @ block.experts.down_proj[e].T
            weight = (gate * (picks == e)).sum(dim=-1)
            expected[e] = float((weight * out.norm(dim=-1)).sum())
    np.testing.assert_allclose(stats.routing[stats.taps[0].router], expected, rtol=1e-4)
    plan = gp.plan(
        analysis, gp.PlanOptions(ratio=0.25, only=("experts",), criterion="activation"), stats=stats
    )
    assert plan.choices[0].removed == sorted(np.argsort(expected)[:2].tolist())


def test_top_k_values_of_channels_without_indices_is_no_router():
    g = GraphBuilder()
    x = g.input([4, 16])
    logits = g.op("Gemm", [x, g.weight(8, 16)], transB=1)
    g.output(g.op("TopK", [logits, g.const(np.array([2]))], outputs=2, axis=-1)[0])
    analysis = gp.analyze(gp.load(g.model()))
    assert "indices pick nothing" in str(analysis.groups[0].reasons[0])


def test_onnxruntime_quantized_moe_op_loses_experts():
    from models.moe_zoo import ort_qmoe

    model = gp.load(ort_qmoe())
    analysis = gp.analyze(model)
    assert [(g.kind, g.channels, g.prunable) for g in analysis.groups] == [("experts", 8, True)]
    plan = gp.plan(analysis, 0.5)
    pruned = gp.prune(analysis, plan)
    shapes = {t.name: list(t.dims) for t in pruned.graph.initializer}
    assert shapes["fc1"] == [4, 16, HIDDEN] and shapes["fc2_scales"] == [4, HIDDEN]
    rng = np.random.default_rng(3)
    inputs = {"x": rng.standard_normal((12, HIDDEN)).astype(np.float16)}
    expected = outputs(gp.mask(analysis, plan), inputs)
    assert_same_outputs(expected, outputs(pruned, inputs))
    shifted = gp.plan_from_json(analysis, _shifted(plan.to_json(analysis), "router"))
    with pytest.raises(AssertionError):
        assert_same_outputs(expected, outputs(gp.prune(analysis, shifted), inputs))


@pytest.mark.parametrize("quantized", [False, True])
def test_fused_moe_ops_are_scored_by_their_routing(tmp_path, quantized):
    """Calibrated expert scores of onnxruntime's MoE and QMoE ops: each expert's summed
    softmax gate over the top-k picks, so the scores add up to the mass the picks carry."""
    from models.moe_zoo import ort_qmoe

    model = gp.load(ort_qmoe() if quantized else ort_moe())
    analysis = gp.analyze(model)
    dtype = np.float16 if quantized else np.float32
    x = np.random.default_rng(4).standard_normal((16, HIDDEN)).astype(dtype)
    np.savez(tmp_path / "calib.npz", x=x)
    stats = gp.calibrate(analysis, gp.CalibrationData(path=str(tmp_path / "calib.npz")))
    (scores,) = stats.routing.values()
    assert scores.shape == (8,) and (scores >= 0).all()
    assert 0 < scores.sum() <= 16 + 1e-3
    options = gp.PlanOptions(ratio=0.25, criterion="activation", only=("experts",))
    removed = sorted(i for c in gp.plan(analysis, options, stats=stats).choices for i in c.removed)
    assert removed == sorted(np.argsort(scores, kind="stable")[:2].tolist())
