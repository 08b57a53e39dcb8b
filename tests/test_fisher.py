"""Output-aware criteria ("fisher", "obs-fisher"): the mask gradients and output metric of
`recovery.fisher` against finite differences run in onnxruntime, the OBS metric against
its definition, and the CLI end to end against the masking oracle."""

from __future__ import annotations

import itertools
import json

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from oracle import assert_same_outputs, outputs
from output_allocation import allocate, cost_curves

import graphprune as gp
from graphprune.api import sensitivity
from graphprune.cli import main
from graphprune.planning.plan import plan_from_json
from graphprune.posttrain.compensation import compensated_model
from graphprune.posttrain.criteria import calibrated_scores

SAMPLES, TOKENS, HIDDEN = 4, 6, 12


def mlp(w2: np.ndarray | None = None, det: bool = False) -> onnx.ModelProto:
    """x [N, 6, 8] -> fc1 (8 -> 12) -> Relu -> fc2 (12 -> 6) -> Tanh -> y [N, 6, 6]
    (-> Det -> [N] with `det`: an op the torch lowering lacks)."""
    rng = np.random.default_rng(3)
    weights = {
        "w1": rng.standard_normal((8, HIDDEN)),
        "b1": rng.standard_normal(HIDDEN) * 0.5,
        "w2": rng.standard_normal((HIDDEN, 6)) * 0.4 if w2 is None else w2,
    }
    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["m"], name="fc1"),
        helper.make_node("Add", ["m", "b1"], ["a"], name="fc1_bias"),
        helper.make_node("Relu", ["a"], ["h"], name="act"),
        helper.make_node("MatMul", ["h", "w2"], ["z"], name="fc2"),
        helper.make_node("Tanh", ["z"], ["y"], name="tanh"),
    ]
    out = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", TOKENS, 6])
    if det:
        nodes.append(helper.make_node("Det", ["y"], ["d"], name="det"))
        out = helper.make_tensor_value_info("d", TensorProto.FLOAT, ["N"])
    graph = helper.make_graph(
        nodes, "fisher",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", TOKENS, 8])], [out],
        [numpy_helper.from_array(v.astype(np.float32), k) for k, v in weights.items()],
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return gp.load(model)


def _data(tmp_path) -> gp.CalibrationData:
    x = np.random.default_rng(5).standard_normal((SAMPLES, TOKENS, 8)).astype(np.float32)
    np.savez(tmp_path / "calib.npz", x=x)
    return gp.CalibrationData(path=str(tmp_path / "calib.npz"))


def _weight(model: onnx.ModelProto, name: str) -> np.ndarray:
    found = next(t for t in model.graph.initializer if t.name == name)
    return numpy_helper.to_array(found).astype(np.float64)


def _with_weight(model: onnx.ModelProto, name: str, value: np.ndarray) -> onnx.ModelProto:
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    found = next(t for t in copy.graph.initializer if t.name == name)
    found.CopyFrom(numpy_helper.from_array(value.astype(np.float32), name))
    return copy


def _statistics(model, data, seed: int = 7, **options):
    analysis = gp.analyze(model)
    stats = gp.calibrate(analysis, data, batch=SAMPLES, scatter=True)
    sensitivity(analysis, data, stats, batch=SAMPLES, seed=seed, **options)
    return analysis, stats


def test_mask_fisher_and_output_metric_match_finite_differences(tmp_path):
    model, data = mlp(), _data(tmp_path)
    _, stats = _statistics(model, data)
    assert [c.node for c in stats.consumers] == ["fc2"]
    # The random direction of the one batch and output, drawn as `output_sensitivity` does.
    r = torch.randn((SAMPLES, TOKENS, 6), generator=torch.Generator().manual_seed(7)).numpy()
    x = dict(np.load(tmp_path / "calib.npz"))
    w2, dy = _weight(model, "w2"), _mask_derivatives(model, x)
    expected = ((r * dy).sum(axis=(2, 3)) ** 2).sum(1) / SAMPLES  # (dL/dm_c)^2
    jacobian = (dy**2).sum(axis=(1, 2, 3)) / SAMPLES  # ||d out / d m_c||^2, E_r of the above
    np.testing.assert_allclose(stats.fisher["fc2"], expected, rtol=2e-2)
    # dL/dz = r * tanh'(z): its Gram matrix over every position, per sample.
    h = np.maximum(x["x"].astype(np.float64) @ _weight(model, "w1") + _weight(model, "b1"), 0)
    g = (r * (1 - np.tanh(h @ w2) ** 2)).reshape(-1, 6)
    np.testing.assert_allclose(stats.output_gram["fc2"], g.T @ g / SAMPLES, rtol=1e-4)
    # Many projections average to the expectation: the squared Jacobian (4 samples x 256
    # draws: a few percent of noise), where one draw is far from it.
    _, many = _statistics(model, data, projections=256)
    np.testing.assert_allclose(many.fisher["fc2"], jacobian, rtol=0.25)
    assert not np.allclose(stats.fisher["fc2"], jacobian, rtol=0.25)


def test_a_shared_axis_projects_the_sum_over_it(tmp_path):
    """shared_axes=(1,): one direction per sample, L = r . sum over the sequence of the
    output (a mean-pooled sentence embedding's change, up to 1/T)."""
    model, data = mlp(), _data(tmp_path)
    _, stats = _statistics(model, data, shared_axes=(1,))
    r = torch.randn((SAMPLES, 1, 6), generator=torch.Generator().manual_seed(7)).numpy()
    dy = _mask_derivatives(model, dict(np.load(tmp_path / "calib.npz")))
    expected = ((r * dy).sum(axis=(2, 3)) ** 2).sum(1) / SAMPLES
    np.testing.assert_allclose(stats.fisher["fc2"], expected, rtol=2e-2)


def _mask_derivatives(model: onnx.ModelProto, feeds: dict, eps: float = 1e-3) -> np.ndarray:
    """d out / d m_c by central differences in onnxruntime, [channel, *out.shape]: a mask
    m_c on fc2's input channel c is row c of its weight scaled by m_c."""
    w2, found = _weight(model, "w2"), []
    for channel in range(HIDDEN):
        ys = []
        for sign in (1, -1):
            scaled = w2.copy()
            scaled[channel] *= 1 + sign * eps
            ys.append(outputs(_with_weight(model, "w2", scaled), feeds)[0].astype(np.float64))
        found.append((ys[0] - ys[1]) / (2 * eps))
    return np.stack(found)


def test_obs_fisher_is_obs_in_the_output_metric(tmp_path):
    """tr(W^T M W G) = tr((W L)^T M (W L)) with G = L L^T: "obs-fisher" of the model equals
    "obs" of the model whose fc2 weight is W L (same input statistics)."""
    model, data = mlp(), _data(tmp_path)
    analysis, stats = _statistics(model, data)
    cholesky = np.linalg.cholesky(stats.output_gram["fc2"])
    other = mlp(w2=_weight(model, "w2") @ cholesky)
    other_analysis = gp.analyze(other)
    other_stats = gp.calibrate(other_analysis, data, batch=SAMPLES, scatter=True)
    weighted = calibrated_scores(analysis, stats, "obs-fisher")
    plain = calibrated_scores(other_analysis, other_stats, "obs")
    assert np.isfinite(weighted).sum() == HIDDEN
    np.testing.assert_allclose(weighted, plain, rtol=1e-6, equal_nan=True)
    assert not np.allclose(weighted, calibrated_scores(analysis, stats, "obs"), equal_nan=True)


@pytest.mark.parametrize("criterion", ["fisher", "obs-fisher"])
def test_cli_prunes_the_lowest_fisher_channels_like_the_oracle(tmp_path, criterion):
    model, data = mlp(), _data(tmp_path)
    onnx.save(model, tmp_path / "m.onnx")
    out, report = tmp_path / "o.onnx", tmp_path / "r.json"
    code = main(["prune", str(tmp_path / "m.onnx"), "-o", str(out), "--quiet", "--ratio",
                 "0.5", "--criterion", criterion, "--calib", str(tmp_path / "calib.npz"),
                 "--calib-batch", str(SAMPLES), "--report", str(report)])  # fmt: skip
    assert code == 0 and json.loads(report.read_text())["plan"]["options"]["criterion"] == criterion
    analysis, stats = _statistics(model, data, seed=0)  # the CLI's --seed
    scores = calibrated_scores(analysis, stats, criterion)[analysis.groups[0].classes]
    pruned = onnx.load(out)
    recorded = json.loads(next(p.value for p in pruned.metadata_props
                               if p.key == "graphprune.plan"))  # fmt: skip
    plan = plan_from_json(analysis, recorded)
    (choice,) = plan.choices
    assert sorted(choice.removed) == sorted(np.argsort(scores)[: HIDDEN // 2].tolist())
    feeds = {"x": np.random.default_rng(9).standard_normal((3, TOKENS, 8)).astype(np.float32)}
    assert_same_outputs(outputs(gp.mask(analysis, plan), feeds), outputs(pruned, feeds))


def test_an_op_the_lowering_lacks_is_a_one_line_error(tmp_path, capsys):
    onnx.save(mlp(det=True), tmp_path / "m.onnx")
    _data(tmp_path)
    code = main(["prune", str(tmp_path / "m.onnx"), "-o", str(tmp_path / "o.onnx"), "--quiet",
                 "--ratio", "0.5", "--criterion", "fisher", "--calib",
                 str(tmp_path / "calib.npz")])  # fmt: skip
    error = capsys.readouterr().err
    assert code == 1 and error.count("\n") == 1
    assert "criterion 'fisher' needs gradients" in error and "Det" in error
    assert not (tmp_path / "o.onnx").exists()


def test_cost_curves_are_the_repaired_output_error_in_the_output_metric(tmp_path):
    """Removing the r lowest-scored channels and repairing by least squares leaves
    tr(E[e e^T] G), e the centred residual: computed here from the activations themselves."""
    model = mlp()
    x = np.random.default_rng(6).standard_normal((16, TOKENS, 8)).astype(np.float32)
    np.savez(tmp_path / "calib.npz", x=x)
    data = gp.CalibrationData(path=str(tmp_path / "calib.npz"))
    analysis, stats = _statistics(model, data)
    group = analysis.groups[0]
    scores = calibrated_scores(analysis, stats, "obs-fisher")
    (curve,) = cost_curves(analysis, stats, [group], scores, step=4, damp=1e-10).values()
    assert curve.shape == (3,) and curve[0] == 0 and curve[1] < curve[2]
    h = np.maximum(x.astype(np.float64) @ _weight(model, "w1") + _weight(model, "b1"), 0)
    h = h.reshape(-1, HIDDEN) - h.reshape(-1, HIDDEN).mean(0)
    w2, gram = _weight(model, "w2"), stats.output_gram["fc2"]
    order = np.argsort(scores[group.classes], kind="stable")
    for index, count in enumerate((4, 8), start=1):
        removed = np.zeros(HIDDEN, dtype=bool)
        removed[order[:count]] = True
        lost = h[:, removed] @ w2[removed]
        delta = np.linalg.lstsq(h[:, ~removed], lost, rcond=None)[0]
        residual = h[:, ~removed] @ delta - lost
        expected = np.trace(residual.T @ residual @ gram) / len(h)
        np.testing.assert_allclose(curve[index], expected, rtol=1e-5)


def test_allocation_is_the_cheapest_split_of_the_total():
    rng = np.random.default_rng(0)
    curves = {g: np.concatenate([[0.0], np.cumsum(rng.random(5))]) for g in range(3)}
    counts = allocate(curves, total=14, step=2)
    assert sum(counts.values()) == 14 and all(c % 2 == 0 for c in counts.values())
    best = min(
        (sum(curves[g][s] for g, s in enumerate(split)), split)
        for split in itertools.product(range(6), repeat=3) if sum(split) == 7
    )  # fmt: skip
    assert tuple(counts[g] // 2 for g in range(3)) == best[1]
    with pytest.raises(gp.GraphpruneError, match="cannot lose"):
        allocate(curves, total=32, step=2)


def test_conv_network_with_repair_matches_the_oracle(tmp_path):
    """A ResNet (Conv consumers: the mask and the output metric on channel axis 1) pruned by
    obs-fisher with lsq repair equals the repaired dense model with the channels masked."""
    model = gp.load("models/example/resnet_tiny.onnx")
    (name,) = [i.name for i in model.graph.input]
    images = np.random.default_rng(2).standard_normal((16, 3, 32, 32)).astype(np.float32)
    np.savez(tmp_path / "calib.npz", **{name: images})
    data = gp.CalibrationData(path=str(tmp_path / "calib.npz"))
    analysis, stats = _statistics(model, data)
    assert {c.op for c in stats.consumers} == {"Conv", "Gemm"}
    assert all(np.all(stats.fisher[c.node] >= 0) for c in stats.consumers)
    plan = gp.plan(analysis, gp.PlanOptions(ratio=0.3, criterion="obs-fisher"), stats=stats)
    pruned = gp.compensate(analysis, plan, stats, method="lsq")
    dense, _ = compensated_model(analysis, plan.keep_atom(analysis), stats, method="lsq")
    again = gp.analyze(dense)
    oracle = gp.mask(again, plan_from_json(again, plan.to_json(analysis)))
    feeds = {name: images[:1]}  # the model's batch is 1
    assert_same_outputs(outputs(oracle, feeds), outputs(pruned, feeds))
