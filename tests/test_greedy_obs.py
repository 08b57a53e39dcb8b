"""Greedy structured OBS ("obs-greedy"): the removal path against brute force, the
allocation its scores make across layers, and the criterion end to end."""

from __future__ import annotations

import itertools
import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from oracle import assert_same_outputs, outputs

import graphprune as gp
from graphprune.cli import main
from graphprune.planning.importance import class_scores
from graphprune.planning.plan import plan_from_json
from graphprune.posttrain.compensation import compensated_model, least_squares
from graphprune.posttrain.greedy_obs import greedy_path, hull_slopes, path_scores
from graphprune.posttrain.statistics import Moments
from graphprune.runtime.inputs import input_shapes, random_inputs

rng = np.random.default_rng(0)


def _problem(features: int = 10, outputs_: int = 4, rows: int = 200):
    """Correlated features (some nearly copies of others) and a weight."""
    base = rng.standard_normal((rows, features))
    base[:, 3] = base[:, 0] - 0.5 * base[:, 1] + 0.01 * rng.standard_normal(rows)
    base[:, 7] = 2.0 * base[:, 2] + 0.1 * rng.standard_normal(rows)
    moments = Moments(scatter=True)
    moments.update(base + rng.standard_normal(features))  # a mean for the bias to absorb
    return moments, rng.standard_normal((features, outputs_))


def _objective(moments: Moments, weight, removed: list[int], damp: float) -> float:
    """The damped error of removing `removed` with the least-squares repair, solved
    directly: D = (C_SS + lambda I)^-1 C_SR W_R, error tr(A^T (C + lambda I) A) with A the
    residual map (D kept, -W removed), lambda = damp * mean(diag C) fixed."""
    covariance = moments.covariance
    lam = damp * float(np.mean(np.diag(covariance)))
    kept = np.ones(len(weight), dtype=bool)
    kept[removed] = False
    s, r = np.nonzero(kept)[0], np.nonzero(~kept)[0]
    delta = np.zeros_like(weight)
    system = covariance[np.ix_(s, s)] + lam * np.eye(s.size)
    delta[s] = np.linalg.solve(system, covariance[np.ix_(s, r)] @ weight[r])
    residual = np.where(kept[:, None], delta, -weight)
    error = np.einsum("ij,ij->", residual, covariance @ residual)
    return float(error + lam * (residual**2).sum())


def test_the_path_repair_is_least_squares():
    # With damping ~0 the objective's repair is compensation.least_squares's.
    moments, weight = _problem()
    kept = np.ones(len(weight), dtype=bool)
    kept[[3, 7, 1]] = False
    delta, _ = least_squares(moments.covariance, moments.mean, weight, kept, 1e-12)
    residual = np.where(kept[:, None], delta, -weight)
    error = np.einsum("ij,ij->", residual, moments.covariance @ residual)
    assert _objective(moments, weight, [3, 7, 1], 1e-12) == pytest.approx(error, rel=1e-6)


@pytest.mark.parametrize("size", [1, 2])
@pytest.mark.parametrize("damp", [1e-6, 0.1])
def test_greedy_path_is_the_brute_force_greedy(size, damp):
    # At every step the chosen block is the one whose removal, on top of those already
    # removed, leaves the least lsq error (tried for every candidate with least_squares),
    # and the summed step costs are that error.
    moments, weight = _problem()
    scale = float(np.mean(np.diag(moments.covariance)))
    blocks = [np.arange(i, i + size) for i in range(0, len(weight), size)]
    order, costs = greedy_path(weight, moments.covariance, blocks, damp)
    assert sorted(order.tolist()) == list(range(len(blocks)))
    removed: list[int] = []
    for step, chosen in enumerate(order[:-1]):
        tried = {
            b: _objective(moments, weight, removed + blocks[b].tolist(), damp)
            for b in range(len(blocks)) if b not in order[:step]
        }  # fmt: skip
        assert tried[int(chosen)] == pytest.approx(min(tried.values()), rel=1e-6)
        removed += blocks[int(chosen)].tolist()
        total = _objective(moments, weight, removed, damp)
        assert costs[: step + 1].sum() == pytest.approx(total, rel=1e-6, abs=1e-9 * scale)
    # Removing everything leaves the (damped) output energy, whatever the path.
    energy = (
        np.einsum("ij,ij->", weight, moments.covariance @ weight) + damp * scale * (weight**2).sum()
    )
    assert costs.sum() == pytest.approx(energy, rel=1e-6)


def test_greedy_beats_one_shot_on_near_copies():
    # Features 0 and 1 are copies: one-shot OBS finds either alone free and removes both;
    # the greedy path removes one, after which the other is expensive.
    x = rng.standard_normal((400, 4))
    x[:, 1] = x[:, 0]
    moments = Moments(scatter=True)
    moments.update(x)
    weight = np.array([[3.0], [3.0], [1.0], [0.5]])
    order, _ = greedy_path(weight, moments.covariance, [np.array([i]) for i in range(4)], 1e-6)
    assert set(order[:2].tolist()) != {0, 1} and order[0] in (0, 1)


def test_hull_slopes():
    values = np.array([0.0, 1.0, 1.5, 3.0, 3.2, 6.0])
    slopes = hull_slopes(values)
    # the lower hull of (k, values[k]): vertices 0, 2, 4, 5
    np.testing.assert_allclose(slopes, [0.75, 0.75, 0.85, 0.85, 2.8])
    for _ in range(20):
        values = np.concatenate([[0.0], np.cumsum(rng.random(12))])
        slopes = hull_slopes(values)
        assert (np.diff(slopes) >= -1e-12).all()
        hull = np.concatenate([[0.0], np.cumsum(slopes)])
        assert (hull <= values + 1e-12).all() and hull[-1] == pytest.approx(values[-1])


def test_scores_allocate_the_least_total_relative_error():
    # Synthetic cost curves of three layers (convex: sorted step costs; one nearly free,
    # one expensive, one in between): removing the K lowest scores of all layers together
    # gives the split of K with the least summed relative error, found by trying all.
    steps = [np.sort(rng.random(8) * s) for s in (0.1, 1.0, 5.0)]
    scores = []
    for costs in steps:
        order = rng.permutation(8)  # the blocks' removal order along the path
        per_block = path_scores(order, costs, energy=costs.sum())
        assert (np.diff(per_block[order]) > 0).all()  # strictly increasing along the path
        scores.append(per_block[order])
    relative = [np.concatenate([[0.0], np.cumsum(c)]) / c.sum() for c in steps]
    for total in range(1, 20):
        ranked = sorted((s, layer) for layer, row in enumerate(scores) for s in row)
        counts = [sum(1 for _, layer in ranked[:total] if layer == i) for i in range(3)]
        best = min(
            sum(relative[i][k[i]] for i in range(3))
            for k in itertools.product(range(9), repeat=3) if sum(k) == total
        )  # fmt: skip
        assert sum(relative[i][counts[i]] for i in range(3)) == pytest.approx(best)


def _two_layer_model() -> onnx.ModelProto:
    """Two residual MLP blocks on x (8 wide), hidden 12 each: h = x + fc2(relu(fc1(x))),
    y = h + fc4(relu(fc3(h))); the first block's hidden channels 4-11 are copies (up to
    scale) of channels 0-3."""
    w1 = rng.standard_normal((8, 12))
    w1[:, 4:] = np.repeat(w1[:, :4], 2, axis=1) * rng.uniform(0.5, 2.0, 8)
    weights = {
        "w1": w1, "w2": rng.standard_normal((12, 8)),
        "w3": rng.standard_normal((8, 12)), "w4": rng.standard_normal((12, 8)),
    }  # fmt: skip
    nodes = []
    stream = "x"
    for block, (up, down) in enumerate([(1, 2), (3, 4)]):
        nodes += [
            helper.make_node("MatMul", [stream, f"w{up}"], [f"m{up}"], name=f"fc{up}"),
            helper.make_node("Relu", [f"m{up}"], [f"a{up}"], name=f"act{up}"),
            helper.make_node("MatMul", [f"a{up}", f"w{down}"], [f"m{down}"], name=f"fc{down}"),
            helper.make_node("Add", [stream, f"m{down}"], [f"r{block}"], name=f"res{block}"),
        ]
        stream = f"r{block}"
    graph = helper.make_graph(
        nodes, "mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 8])],
        [helper.make_tensor_value_info(stream, TensorProto.FLOAT, ["N", 8])],
        [numpy_helper.from_array(v.astype(np.float32), k) for k, v in weights.items()],
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return gp.load(model)


def test_obs_greedy_global_through_the_command_line(tmp_path):
    # --criterion obs-greedy --global: the redundant first layer gives more channels than
    # the second; the pruned model is the compensated model masked by the plan (oracle).
    model = _two_layer_model()
    onnx.save(model, tmp_path / "m.onnx")
    np.savez(tmp_path / "c.npz", x=rng.standard_normal((256, 8)).astype(np.float32))
    args = [
        "prune", str(tmp_path / "m.onnx"), "-o", str(tmp_path / "p.onnx"), "--ratio", "0.5",
        "--criterion", "obs-greedy", "--global", "--calib", str(tmp_path / "c.npz"),
        "--compensate", "lsq", "--damp", "0.01", "--report", str(tmp_path / "r.json"),
        "--quiet",
    ]  # fmt: skip
    assert main(args) == 0
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["plan"]["options"]["normalization"] == "none"
    removed = {g["name"]: len(g["removed"]) for g in report["plan"]["groups"]}
    assert sum(removed.values()) == 12 and len(removed) == 2
    first, second = (removed[name] for name in sorted(removed))
    assert first > second  # the layer of copies gives more
    analysis = gp.analyze(model)
    plan = plan_from_json(analysis, report["plan"])
    stats = gp.calibrate(analysis, gp.CalibrationData(path=str(tmp_path / "c.npz")), scatter=True)
    dense, _ = compensated_model(analysis, plan.keep_atom(analysis), stats, damp=0.01)
    again = gp.analyze(dense)
    feeds = {"x": rng.standard_normal((16, 8)).astype(np.float32)}
    pruned = onnx.load(tmp_path / "p.onnx")
    assert_same_outputs(outputs(gp.mask(again, plan_from_json(again, report["plan"])), feeds),
                        outputs(pruned, feeds))  # fmt: skip
    # Deterministic: the same options give the same bytes.
    assert main([*args[:3], str(tmp_path / "q.onnx"), *args[4:]]) == 0
    assert (tmp_path / "q.onnx").read_bytes() == (tmp_path / "p.onnx").read_bytes()


def test_group_weights_scale_the_global_ranking(tmp_path):
    # Weighted global ranking: the removed channels are the lowest weight x score of all
    # groups together (brute force), so weighting a layer up makes it keep more.
    model = _two_layer_model()
    np.savez(tmp_path / "c.npz", x=rng.standard_normal((256, 8)).astype(np.float32))
    analysis = gp.analyze(model)
    stats = gp.calibrate(analysis, gp.CalibrationData(path=str(tmp_path / "c.npz")), scatter=True)
    scores, _ = class_scores(analysis, "obs-greedy", "mean", "none", 0, stats)
    groups = [g for g in analysis.groups if g.prunable]
    counts = {}
    for weights in ({}, {"fc3": 0.2}, {"fc1": 0.5, "fc3": 2.0}):
        options = gp.PlanOptions(ratio=0.5, criterion="obs-greedy", global_ranking=True,
                                 group_weights=weights)  # fmt: skip
        plan = gp.plan(analysis, options, stats=stats)
        ranked = sorted(
            (scores[c] * weights.get(g.name, 1.0), g.id, i)
            for g in groups for i, c in enumerate(g.classes)
        )  # fmt: skip
        expected = {(gid, i) for _, gid, i in ranked[:12]}
        assert {(c.group, i) for c in plan.choices for i in c.removed} == expected
        if weights:
            assert plan.options["group_weights"] == weights
        removed = {analysis.groups[c.group].name: len(c.removed) for c in plan.choices}
        counts[tuple(weights.items())] = removed.get("fc3", 0)
    assert counts[(("fc3", 0.2),)] > counts[()]  # weighted down: fc3 gives more
    for bad, message in (({"nope": 1.0}, "name no group"), ({"fc1": 0.0}, "positive")):
        with pytest.raises(gp.GraphpruneError, match=message):
            gp.plan(analysis, gp.PlanOptions(ratio=0.5, criterion="obs-greedy",
                                             global_ranking=True, group_weights=bad),
                    stats=stats)  # fmt: skip


def test_obs_greedy_on_convolutions_matches_the_oracle(tmp_path):
    # A real architecture with Conv consumers: a class is a block of patch features
    # (channel x kernel offset), removed together; the pruned model is the compensated one
    # masked by the plan.
    model = gp.load("models/example/resnet_tiny.onnx")
    analysis = gp.analyze(model)
    shapes = {name: shape[1:] for name, shape in input_shapes(model).items()}
    data = gp.CalibrationData(random=16, shapes=shapes, seed=0)
    stats = gp.calibrate(analysis, data, scatter=True)
    options = gp.PlanOptions(ratio=0.3, criterion="obs-greedy", global_ranking=True)
    plan = gp.plan(analysis, options, stats=stats)
    kept = {c.group: len(c.kept) for c in plan.choices}
    assert len(set(kept.values())) > 1  # the layers keep different widths
    dense, _ = compensated_model(analysis, plan.keep_atom(analysis), stats, damp=0.01)
    again = gp.analyze(dense)
    same = plan_from_json(again, plan.to_json(analysis))
    pruned = gp.prune(again, same)
    feeds = random_inputs(model, input_shapes(model), seed=1)
    assert_same_outputs(outputs(gp.mask(again, same), feeds), outputs(pruned, feeds))
