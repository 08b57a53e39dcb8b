"""Latency-aware pruning: the profile's tables, the planner's decisions under a latency
budget (on synthetic tables: no assertion here depends on wall-clock time), the
plan-measure-correct loop (with a deterministic stand-in for the timer), and the command
line (profile, prune --target-latency, a table measured for another run refused)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from oracle import assert_same_outputs, outputs

import graphprune as gp
import graphprune.planning.target as target_module
from graphprune.cli import main
from graphprune.core.metrics import count_macs
from graphprune.errors import GraphpruneError
from graphprune.io.shapes import infer_shapes
from graphprune.planning.budget import block_owners
from graphprune.planning.importance import class_scores
from graphprune.planning.latency import LatencyCostModel, snap_steps
from graphprune.planning.target import plan_to_latency
from graphprune.runtime.inputs import input_shapes, random_inputs
from graphprune.runtime.layers import LayerSpec, layer_axes
from graphprune.runtime.profile import (
    AxisCurve,
    LatencyTable,
    LayerTiming,
    ProfileOptions,
    fingerprint,
    grid,
    machine_id,
    profile,
)  # fmt: skip
from graphprune.runtime.sessions import run, session
from models import transformers_zoo
from models.export import cached

EXAMPLE = Path(__file__).parent.parent / "models" / "example" / "resnet_tiny.onnx"
FAST = ProfileOptions(threads=1, repeats=1, warmup=0)


def synthetic_table(analysis, costly: str | None = None, cliff: bool = False) -> LatencyTable:
    """A table with latency linear in every width: 1 ms per layer, `costly` layer 20 ms;
    with `cliff`, widths off a multiple of 16 cost twice the aligned curve."""
    layers = {}
    for name, roles in layer_axes(analysis).items():
        axes = {}
        for role, atoms in roles.items():
            widths, _ = grid(atoms.size)
            curve = AxisCurve(atoms.size, widths, [w / atoms.size for w in widths])
            if cliff:
                curve.penalty = {1: 2.0, 8: 2.0, 16: 1.0, 32: 1.0, 64: 1.0}
            axes[role] = curve
        layers[name] = LayerTiming(name, name, 20.0 if name == costly else 1.0, 1000, axes)
    shapes = input_shapes(analysis.view.model)
    return LatencyTable(
        machine=machine_id(), provider="CPUExecutionProvider", threads=1,
        shapes={k: list(v) for k, v in shapes.items()}, model=fingerprint(analysis.view.model),
        measured_ms=float(len(layers) + 5), repeats=1, layers=layers,
    )  # fmt: skip


def kept_fraction(analysis, plan, source: str) -> float:
    group = next(g for g in analysis.groups if source in g.sources)
    choice = next((c for c in plan.choices if c.group == group.id), None)
    return 1.0 if choice is None else len(choice.kept) / group.channels


@pytest.fixture(scope="module")
def tiny():
    model = gp.load(EXAMPLE)
    return model, gp.analyze(model)


def test_latency_plan_keeps_more_importance_at_equal_predicted_latency(tiny):
    """Importance per unit of latency (HALP's greedy): with one layer 20x as costly as the
    others, the latency plan meets its prediction, keeps more importance than a MACs plan
    that the same table predicts at most as fast, and takes most from the group feeding
    the costly layer (its input channels: 32 of them price 20 ms)."""
    model, analysis = tiny
    table = synthetic_table(analysis, costly="/layers/layers.2/layers.2.0/conv1/Conv")
    cost = LatencyCostModel(analysis, table)
    plan = gp.plan(analysis, gp.PlanOptions(budget=gp.Budget("latency", 0.6, table=table)))
    predicted = cost.cost(plan.keep_atom(analysis))
    assert cost.cost(np.ones(analysis.class_of.shape[0], bool)) == pytest.approx(cost.total)
    assert predicted <= 0.6 * cost.total + 1e-9
    assert plan.budget["predicted_ms"] == pytest.approx(predicted)
    low, high = 0.01, 1.0  # the MACs target the table predicts at the same latency
    for _ in range(20):
        middle = (low + high) / 2
        by_macs = gp.plan(analysis, gp.PlanOptions(budget=gp.Budget("macs", middle)))
        low, high = (middle, high) if cost.cost(by_macs.keep_atom(analysis)) <= predicted else (
            low, middle)  # fmt: skip
    by_macs = gp.plan(analysis, gp.PlanOptions(budget=gp.Budget("macs", low)))
    assert cost.cost(by_macs.keep_atom(analysis)) <= predicted
    scores, _ = class_scores(analysis, "l2", "mean", "mean", 0, None)

    def kept_importance(chosen) -> float:
        return float(np.delete(scores, chosen.removed_classes).sum())

    assert kept_importance(plan) > 1.05 * kept_importance(by_macs)
    feeding = "/layers/layers.1/layers.1.0/downsample/downsample.0/Conv"
    assert kept_fraction(analysis, plan, feeding) < 0.5 * kept_fraction(analysis, by_macs, feeding)
    feeds = random_inputs(model, input_shapes(model), seed=1)
    assert_same_outputs(outputs(gp.mask(analysis, plan), feeds),
                        outputs(gp.prune(analysis, plan), feeds))  # fmt: skip


def test_widths_snap_to_the_cliff_the_table_shows(tiny):
    _, analysis = tiny
    flat = LatencyCostModel(analysis, synthetic_table(analysis))
    steep = LatencyCostModel(analysis, synthetic_table(analysis, cliff=True))
    assert set(snap_steps(analysis, flat, 1).values()) == {1}
    steps = snap_steps(analysis, steep, 1)
    wide = {g.id for g in analysis.prunable_groups if g.channels >= 64}
    assert wide and all(steps[g] == 16 for g in wide)
    assert all(steps[g] == 1 for g in steps if analysis.groups[g].channels < 64)  # 16 too big
    assert snap_steps(analysis, steep, 3)[next(iter(wide))] == 48  # with --round-to 3
    table = synthetic_table(analysis, cliff=True)
    plan = gp.plan(analysis, gp.PlanOptions(budget=gp.Budget("latency", 0.5, table=table)))
    for choice in plan.choices:
        if choice.group in wide:
            assert len(choice.kept) % 16 == 0


def test_latency_budget_needs_a_table(tiny):
    _, analysis = tiny
    with pytest.raises(GraphpruneError, match="latency table"):
        gp.plan(analysis, gp.PlanOptions(budget=gp.Budget("latency", 0.5)))


def test_loop_corrects_the_goal_until_the_measurement_is_on_target(tiny, monkeypatch):
    """A stand-in timer whose latency is MACs^0.6 plus a fixed part: the prediction
    (linear) is off, and the loop must converge on the measured target anyway."""
    model, analysis = tiny
    shapes = input_shapes(model)
    total = count_macs(model, shapes)

    def fake_bench(original, pruned, feeds, repeats, provider, threads, **_):
        fraction = 0.2 + 0.8 * (count_macs(pruned, shapes) / total) ** 0.6
        return {
            "latency_ms_before": 10.0,
            "latency_ms_after": 10.0 * fraction,
            "paired_fraction": fraction,
            "repeats": 1,
            "copies_ms_before": {"upload_ms": 0.0, "download_ms": 0.0},
            "copies_ms_after": {"upload_ms": 0.0, "download_ms": 0.0},
        }

    monkeypatch.setattr(target_module, "bench", fake_bench)
    table = synthetic_table(analysis)
    options = gp.PlanOptions(budget=gp.Budget("latency", 0.7, table=table))
    feeds = random_inputs(model, shapes)
    result = plan_to_latency(analysis, options, lambda p: gp.prune(analysis, p), feeds,
                             table=table, target=0.7, tolerance=0.03, iterations=6)  # fmt: skip
    summary = result.summary
    assert summary["within_tolerance"] and abs(summary["measured_fraction"] / 0.7 - 1) <= 0.03
    first = summary["attempts"][0]
    assert first["goal"] == 0.7
    for before, after in zip(summary["attempts"][:-1], summary["attempts"][1:], strict=True):
        if before["measured_fraction"] > 0.7:  # too slow: plan for less
            assert after["goal"] < before["goal"]
        else:
            assert after["goal"] > before["goal"]
    assert fake_bench(None, result.model, None, 0, "", 1)["latency_ms_after"] / 10 == (
        pytest.approx(summary["measured_fraction"])
    )


@pytest.mark.parametrize(("name", "exporter"), [
    ("resnet_tiny", "dynamo"), ("mobilenetv2", "classic"), ("resnext", "classic"),
    ("minilm", "classic"),
])  # fmt: skip
def test_every_layer_rebuilds_at_other_widths(name, exporter):
    """Each profiled layer (grouped, depthwise, Gemm, MatMul on 3-D activations) runs as a
    one-layer model at its full width, with its output shape, and at a narrower one."""
    source = transformers_zoo if name in transformers_zoo.TRANSFORMERS else None
    model = gp.load(source.cached(name, exporter) if source else cached(name, exporter))
    analysis = gp.analyze(model)
    concrete = infer_shapes(model, input_shapes(model))
    axes = layer_axes(analysis)
    assert axes
    rng = np.random.default_rng(0)
    for node_name, roles in axes.items():
        spec = LayerSpec.of(analysis.view, analysis.view.nodes[node_name], concrete)
        assert spec is not None, node_name
        node = analysis.view.nodes[node_name]
        for role in roles:
            channels = spec.channels(role)
            assert channels == roles[role].size
            for width in (channels, max(1, channels // 2)):
                layer, x = spec.model(role, width, rng)
                (y,) = run(session(layer, "CPUExecutionProvider", 1), {"x": x})
                if width == channels:
                    assert list(y.shape) == list(concrete[node.output[0]]), node_name


def test_profile_of_a_real_model_and_its_json(tiny):
    model, analysis = tiny
    feeds = random_inputs(model, input_shapes(model))
    table = profile(analysis, input_shapes(model), feeds, FAST)
    assert set(table.layers) == set(layer_axes(analysis))
    assert table.measured_ms > 0 and table.threads == 1
    for layer in table.layers.values():
        for curve in layer.axes.values():
            assert curve.widths[-1] == curve.channels
            assert curve.ms == sorted(curve.ms)  # wider is never cheaper
    text = json.dumps(table.to_json())
    again = LatencyTable.from_json(json.loads(text), "t.json")
    assert json.dumps(again.to_json()) == text
    with pytest.raises(GraphpruneError, match="threads"):
        again.check_matches("t.json", machine=table.machine, provider=table.provider,
                            threads=2, shapes=input_shapes(model), model=table.model,
                            timing=table.timing)  # fmt: skip
    with pytest.raises(GraphpruneError, match="not a valid latency table"):
        LatencyTable.from_json({"format": "graphprune.latency-table/1"}, "t.json")


def test_profile_of_a_transformer_covers_every_axis():
    """Layers alike in shape may shrink different axes (query projections their heads, the
    attention output its input): each gets a curve for every axis it has."""
    model = gp.load(transformers_zoo.cached("minilm", "classic"))
    analysis = gp.analyze(model)
    shapes = input_shapes(model)
    table = profile(analysis, shapes, random_inputs(model, shapes), FAST)
    axes = layer_axes(analysis)
    assert {r for roles in axes.values() for r in roles} == {"in", "out"}
    for name, roles in axes.items():
        assert set(table.layers[name].axes) == set(roles)
    cost = LatencyCostModel(analysis, table)
    plan = gp.plan(analysis, gp.PlanOptions(ratio=0.5))
    assert 0 < cost.cost(plan.keep_atom(analysis)) < cost.total


def test_cli_profile_then_prune_to_a_latency(tmp_path, capsys):
    table = tmp_path / "table.json"
    assert main(["profile", str(EXAMPLE), "-o", str(table), "--threads", "1",
                 "--repeats", "2"]) == 0  # fmt: skip
    assert list(tmp_path.iterdir()) == [table]
    assert "profiled" in capsys.readouterr().out
    out, report = tmp_path / "out.onnx", tmp_path / "r.json"
    code = main([
        "prune", str(EXAMPLE), "-o", str(out), "--quiet", "--target-latency", "0.7",
        "--latency-table", str(table), "--threads", "1", "--repeats", "2",
        "--latency-iterations", "2", "--report", str(report),
    ])  # fmt: skip
    assert code == 0
    onnx.checker.check_model(onnx.load(out), full_check=True)
    latency = json.loads(report.read_text())["latency"]
    assert {"predicted_ms", "measured_ms", "original_ms", "attempts"} <= set(latency)
    assert 1 <= len(latency["attempts"]) <= 2 and latency["target_fraction"] == 0.7
    assert "(70.0%): predicted" in capsys.readouterr().out


def test_cli_refuses_a_table_of_another_run(tmp_path, capsys):
    table = tmp_path / "table.json"
    assert main(["profile", str(EXAMPLE), "-o", str(table), "--threads", "1",
                 "--repeats", "1"]) == 0  # fmt: skip
    capsys.readouterr()
    out = tmp_path / "out.onnx"
    args = ["prune", str(EXAMPLE), "-o", str(out), "--quiet", "--target-latency", "0.5",
            "--latency-table", str(table)]  # fmt: skip
    assert main([*args, "--threads", "2"]) == 1
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "measured for threads 1" in error
    data = json.loads(table.read_text())
    (tmp_path / "bad.json").write_text(json.dumps(dataclasses.asdict(
        ProfileOptions())))  # fmt: skip
    assert main([*args[:-1], str(tmp_path / "bad.json"), "--threads", "1"]) == 1
    assert "not a valid latency table" in capsys.readouterr().err
    data["model"] = "0" * 16
    table.write_text(json.dumps(data))
    assert main([*args, "--threads", "1"]) == 1
    assert "measured for model" in capsys.readouterr().err
    assert main([*args, "--threads", "1", "--ratio", "0.5"]) == 1
    assert "not both" in capsys.readouterr().err
    assert not out.exists()


def test_dropped_blocks_take_their_layers_out_of_the_prediction():
    """Depth and width together: a dropped residual unit's profiled layers cost nothing
    (each costs 1 ms in the synthetic table), and only its own."""
    model = gp.load(EXAMPLE)
    analysis = gp.analyze(model, blocks="layer")
    cost = LatencyCostModel(analysis, synthetic_table(analysis))
    keep = np.ones(analysis.class_of.shape[0], dtype=bool)
    unit = next(g for g in analysis.groups if g.kind == "blocks" and g.prunable)
    atoms = {int(a) for source in unit.sources for a in analysis.source_atoms[source]}
    owners = block_owners(analysis)
    owned = [n for n in layer_axes(analysis) if any(int(a[0]) in atoms for a in owners[n])]
    assert owned
    dropped = keep & ~np.isin(analysis.class_of, unit.classes)
    saved = cost.cost(keep) - cost.cost(dropped)
    profiled = sum(t.full_ms for t in synthetic_table(analysis).layers.values())
    assert cost.scale * len(owned) <= saved < cost.scale * profiled
