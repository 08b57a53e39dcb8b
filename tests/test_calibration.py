"""Post-training pruning: calibration statistics, calibrated criteria, closed-form
compensation (exact where the theory says it is) and budgets."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from oracle import outputs

import graphprune as gp
from graphprune.cli import main
from graphprune.core.metrics import count_macs
from graphprune.planning.plan import plan_from_json
from graphprune.posttrain.statistics import collect

EXAMPLE = "models/example/resnet_tiny.onnx"
rng = np.random.default_rng(0)


def _model(nodes, weights: dict, x_shape, y_shape, extra=()) -> onnx.ModelProto:
    """`weights` become float32 initializers; `extra` initializers are added as they are."""
    graph = helper.make_graph(
        nodes,
        "calib",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, y_shape)],
        [numpy_helper.from_array(v.astype(np.float32), k) for k, v in weights.items()]
        + list(extra),
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return gp.load(model)


def _hidden(kind: str, out: int = 6, fan_in: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """First-layer weight (out, fan_in) and bias whose channels 4 and 5 are constant
    ("constant") or linear combinations of channels 0-3 ("linear")."""
    w = rng.standard_normal((out, fan_in))
    b = rng.standard_normal(out)
    if kind == "constant":
        w[4:] = 0
    else:
        w[4], b[4] = 0.5 * w[0] - w[1], 0.5 * b[0] - b[1]
        w[5], b[5] = w[2] + 2 * w[3], b[2] + 2 * b[3]
    return w, b


def gemm_model(kind: str) -> onnx.ModelProto:
    w1, b1 = _hidden(kind)
    nodes = [
        helper.make_node("Gemm", ["x", "w1", "b1"], ["h"], name="fc1", transB=1),
        helper.make_node("Gemm", ["h", "w2", "b2"], ["y"], name="fc2", transB=1),
    ]
    weights = {"w1": w1, "b1": b1, "w2": rng.standard_normal((4, 6)), "b2": np.zeros(4)}
    return _model(nodes, weights, ["N", 8], ["N", 4])


def matmul_model(kind: str) -> onnx.ModelProto:
    w1, b1 = _hidden(kind)
    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["m"], name="fc1"),
        helper.make_node("Add", ["m", "b1"], ["h"], name="fc1_bias"),
        helper.make_node("MatMul", ["h", "w2"], ["y"], name="fc2"),
    ]
    weights = {"w1": w1.T, "b1": b1, "w2": rng.standard_normal((6, 4))}
    return _model(nodes, weights, ["N", 8], ["N", 4])


def conv_model(kind: str, pads: int) -> onnx.ModelProto:
    w1, b1 = _hidden(kind, fan_in=27)
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["h"], name="conv1", pads=[1] * 4),
        helper.make_node("Conv", ["h", "w2"], ["y"], name="conv2", pads=[pads] * 4),
    ]
    weights = {"w1": w1.reshape(6, 3, 3, 3), "b1": b1, "w2": rng.standard_normal((4, 6, 3, 3))}
    side = 8 - 2 + 2 * pads
    return _model(nodes, weights, ["N", 3, 8, 8], ["N", 4, side, side])


def _prune(model, tmp_path, method: str, damp: float = 1e-9, samples: int = 64):
    """Remove channels 4 and 5 of the first layer, compensating with `method`."""
    shape = [d.dim_value or samples for d in model.graph.input[0].type.tensor_type.shape.dim]
    shape[0] = samples
    np.savez(tmp_path / "calib.npz", x=rng.standard_normal(shape).astype(np.float32))
    analysis = gp.analyze(model)
    data = gp.CalibrationData(path=str(tmp_path / "calib.npz"))
    stats = gp.calibrate(analysis, data, batch=16, scatter=method == "lsq")
    group = analysis.groups[0]
    plan = plan_from_json(
        analysis,
        {
            "groups": [
                {"name": group.name, "sources": group.sources, "channels": 6, "removed": [4, 5]}
            ]
        },
    )
    pruned = gp.compensate(analysis, plan, stats, method=method, damp=damp)
    shape[0] = 5
    feeds = {"x": rng.standard_normal(shape).astype(np.float32)}
    expected = outputs(model, feeds)[0]
    error = np.abs(outputs(pruned, feeds)[0] - expected).max() / np.abs(expected).max()
    return float(error), analysis, stats, pruned


@pytest.mark.parametrize(
    "build", [gemm_model, matmul_model, lambda kind: conv_model(kind, pads=0)], ids=str
)
def test_bias_compensation_is_exact_for_constant_channels(build, tmp_path):
    error, *_ = _prune(build("constant"), tmp_path, "bias")
    assert error < 1e-5
    plain, *_ = _prune(build("constant"), tmp_path, "none")
    assert plain > 1e-2


@pytest.mark.parametrize(
    "build", [gemm_model, matmul_model, lambda kind: conv_model(kind, pads=1)], ids=str
)
def test_least_squares_is_exact_for_linear_combinations(build, tmp_path):
    error, _, _, pruned = _prune(build("linear"), tmp_path, "lsq")
    assert error < 1e-4
    bias_only, *_ = _prune(build("linear"), tmp_path, "bias")
    assert bias_only > 1e-2
    onnx.checker.check_model(pruned, full_check=True)


def test_matmul_without_bias_gets_an_add():
    model = matmul_model("linear")
    del model.graph.node[1]  # no bias Add after fc1: fc2 has none either way
    model.graph.node[1].input[0] = "m"
    analysis = gp.analyze(model)
    data = gp.CalibrationData(random=32, shapes={"x": (8,)})
    stats = gp.calibrate(analysis, data, scatter=True)
    plan = gp.plan(analysis, gp.PlanOptions(ratio=0.34, criterion="wanda"), stats=stats)
    pruned = gp.compensate(analysis, plan, stats, method="lsq", damp=1e-9)
    assert any(n.op_type == "Add" for n in pruned.graph.node)
    feeds = {"x": rng.standard_normal((5, 8)).astype(np.float32)}
    np.testing.assert_allclose(outputs(pruned, feeds)[0], outputs(model, feeds)[0], atol=1e-3)


def test_flap_removes_constant_channels_first(tmp_path):
    _, analysis, stats, _ = _prune(gemm_model("constant"), tmp_path, "bias")
    for criterion in ("flap", "activation", "wanda"):
        plan = gp.plan(analysis, gp.PlanOptions(ratio=0.34, criterion=criterion), stats=stats)
        assert plan.choices[0].removed == [4, 5], criterion


def test_statistics_do_not_depend_on_the_batch_size(tmp_path):
    model = conv_model("linear", pads=1)
    analysis = gp.analyze(model)
    x = rng.standard_normal((40, 3, 8, 8)).astype(np.float32)
    np.savez(tmp_path / "c.npz", x=x)
    data = gp.CalibrationData(path=str(tmp_path / "c.npz"))
    small, whole = (collect(analysis, data, batch=b, scatter=True) for b in (3, 40))
    for key, moments in small.moments.items():
        other = whole.moments[key]
        assert moments.n == other.n > 0
        np.testing.assert_allclose(moments.mean, other.mean, rtol=1e-9, atol=1e-12)
        if moments.scatter is not None:
            np.testing.assert_allclose(moments.scatter, other.scatter, rtol=1e-9, atol=1e-9)
    exposed = onnx.ModelProto()
    exposed.CopyFrom(model)
    exposed.graph.output[0].name = "h"
    exposed.graph.output[0].type.tensor_type.shape.Clear()
    h = outputs(exposed, {"x": x})[0]
    rows = np.moveaxis(h, 1, -1).reshape(-1, 6).astype(np.float64)
    channels = small.channels(small.consumers[0])
    np.testing.assert_allclose(channels.mean, rows.mean(0), rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(channels.variance, rows.var(0), rtol=1e-6)


def test_budget_reaches_the_macs_target():
    model = gp.load(EXAMPLE)
    analysis = gp.analyze(model)
    plan = gp.plan(
        analysis, gp.PlanOptions(criterion="l2", budget=gp.Budget("macs", 0.5), round_to=2)
    )
    pruned = gp.prune(analysis, plan)
    shapes = {"input": (1, 3, 32, 32)}
    kept = count_macs(pruned, shapes) / count_macs(model, shapes)
    assert 0.45 < kept <= 0.5
    assert abs(kept - plan.budget["estimated_keep"]) < 1e-6
    assert all(kept_count % 2 == 0 for kept_count, _ in plan.budget["groups"].values())


def test_calibrated_criterion_needs_data():
    analysis = gp.analyze(gp.load(EXAMPLE))
    with pytest.raises(gp.GraphpruneError, match="needs calibration data"):
        gp.plan(analysis, gp.PlanOptions(ratio=0.5, criterion="flap"))


def test_cli_post_training(tmp_path):
    report = tmp_path / "r.json"
    args = ["prune", EXAMPLE, "-o", str(tmp_path / "o.onnx"), "--quiet", "--report", str(report)]
    extra = ["--criterion", "flap", "--compensate", "lsq", "--calib-random", "16"]
    assert main([*args, *extra, "--target-macs", "0.5", "--calib-batch", "8"]) == 0
    data = json.loads(report.read_text())
    assert data["macs"]["removed_fraction"] >= 0.5
    assert data["calibration"]["samples"] == 16 and data["compensation"]["method"] == "lsq"
    assert data["budget"]["groups"]


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--calib", "missing.npz", "--criterion", "wanda"], "cannot read --calib missing.npz"),
        (["--calib", "{tmp}/bad.npz", "--criterion", "wanda"], "lacks input"),
        (["--calib-random", "4", "--target-macs", "1.5"], "fraction to keep"),
        (["--criterion", "flap"], "needs calibration data"),
        (["--compensate", "bias", "--ratio", "0.5"], "needs calibration data"),
    ],
)
def test_cli_errors_are_one_line(tmp_path, capsys, extra, message):
    np.savez(tmp_path / "bad.npz", image=np.zeros((2, 3, 32, 32), np.float32))
    extra = [e.replace("{tmp}", str(tmp_path)) for e in extra]
    ratio = [] if any(e.startswith("--target") or e == "--ratio" for e in extra) else ["--ratio"]
    ratio += ["0.5"] if ratio else []
    code = main(["prune", EXAMPLE, "-o", str(tmp_path / "o.onnx"), "--quiet", *ratio, *extra])
    error = capsys.readouterr().err
    assert code == 1 and message in error and error.count("\n") == 1


def test_fixed_batch_inside_the_model_falls_back_to_that_batch(tmp_path):
    w1, b1 = _hidden("constant")
    nodes = [
        helper.make_node("Reshape", ["x", "shape"], ["r"], name="flat"),
        helper.make_node("Gemm", ["r", "w1", "b1"], ["h"], name="fc1", transB=1),
        helper.make_node("Gemm", ["h", "w2"], ["y"], name="fc2", transB=1),
    ]
    weights = {"w1": w1, "b1": b1, "w2": rng.standard_normal((4, 6))}
    shape = numpy_helper.from_array(np.array([1, 8], np.int64), "shape")
    model = _model(nodes, weights, [1, 8], [1, 4], extra=[shape])
    np.savez(tmp_path / "c.npz", x=rng.standard_normal((20, 8)).astype(np.float32))
    analysis = gp.analyze(gp.load(model))
    stats = collect(analysis, gp.CalibrationData(path=str(tmp_path / "c.npz")), batch=8)
    assert stats.samples == 20 and stats.batch == 1 and "fixed at 1" in stats.batch_note
