"""Inputs that run: shapes the original model accepts (probed before pruning, one-line
error naming what was tried), token ids within their embedding table, the calibration
batch the model accepts, options that survive compensation, clean progress output."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import graphprune as gp
from graphprune.cli import main
from graphprune.posttrain.data import CalibrationData, batches
from graphprune.posttrain.statistics import collect
from graphprune.runtime.inputs import (
    CANDIDATE_DIMS,
    candidate_shapes,
    id_ranges,
    input_shapes,
    max_positions,
    random_inputs,
)
from graphprune.runtime.sessions import run, session

rng = np.random.default_rng(0)


def _model(nodes, inputs, weights: dict, y_shape: list) -> onnx.ModelProto:
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, y_shape)]
    initializers = [numpy_helper.from_array(np.asarray(v), k) for k, v in weights.items()]
    graph = helper.make_graph(nodes, "inputs", inputs, outputs, initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def _float(*shape) -> np.ndarray:
    return rng.standard_normal(shape).astype(np.float32)


def image_model(side: int) -> onnx.ModelProto:
    """x [N, 3, h, w] flattened into a Gemm that only fits h = w = side."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3, "h", "w"])
    nodes = [
        helper.make_node("Reshape", ["x", "flat"], ["f"], name="flatten"),
        helper.make_node("Gemm", ["f", "w1", "b1"], ["h1"], name="fc1", transB=1),
        helper.make_node("Relu", ["h1"], ["r"], name="relu"),
        helper.make_node("Gemm", ["r", "w2"], ["y"], name="fc2", transB=1),
    ]
    weights = {
        "flat": np.array([0, -1], np.int64),
        "w1": _float(8, 3 * side * side),
        "b1": _float(8),
        "w2": _float(4, 8),
    }
    return _model(nodes, [x], weights, ["n", 4])


def text_model(vocab: int = 50, positions: int | None = None) -> onnx.ModelProto:
    """Token ids [N, s] (through a Cast) into an embedding of `vocab` rows, plus, when
    `positions` is given, a position table gathered at Range(0, s)."""
    ids = helper.make_tensor_value_info("ids", TensorProto.INT64, ["n", "s"])
    nodes = [
        helper.make_node("Cast", ["ids"], ["ids32"], name="cast", to=TensorProto.INT32),
        helper.make_node("Gather", ["table", "ids32"], ["e"], name="embed"),
    ]
    weights = {"table": _float(vocab, 8), "w1": _float(8, 16), "w2": _float(16, 8)}
    if positions is not None:
        nodes += [
            helper.make_node("Shape", ["ids"], ["shape"], name="shape", start=1, end=2),
            helper.make_node("Squeeze", ["shape"], ["length"], name="length"),
            helper.make_node("Range", ["zero", "length", "one"], ["pos"], name="range"),
            helper.make_node("Gather", ["positions", "pos"], ["p"], name="position"),
            helper.make_node("Add", ["e0", "p"], ["e"], name="add"),
        ]
        nodes[1].output[0] = "e0"
        weights |= {
            "positions": _float(positions, 8),
            "zero": np.array(0, np.int64),
            "one": np.array(1, np.int64),
        }
    nodes += [
        helper.make_node("MatMul", ["e", "w1"], ["h"], name="up"),
        helper.make_node("Relu", ["h"], ["r"], name="relu"),
        helper.make_node("MatMul", ["r", "w2"], ["y"], name="down"),
    ]
    return _model(nodes, [ids], weights, ["n", "s", 8])


def _prune(tmp_path, model, *extra: str) -> tuple[int, dict]:
    source = tmp_path / "model.onnx"
    onnx.save(model, source)
    report = tmp_path / "report.json"
    args = ["prune", str(source), "-o", str(tmp_path / "out.onnx"), "--quiet", *extra]
    code = main([*args, "--report", str(report)])
    return code, json.loads(report.read_text()) if code == 0 else {}


# Shapes the original model runs on.


def test_default_shapes_that_fail_give_way_to_a_candidate_that_runs(tmp_path, capsys):
    code, report = _prune(tmp_path, image_model(64), "--ratio", "0.5")
    assert code == 0 and report["input_shapes"] == {"x": [1, 3, 64, 64]}
    (note,) = report["input_notes"]
    assert "x=1x3x224x224" in note and note.startswith("inputs x=1x3x64x64")
    assert "note: inputs x=1x3x64x64" in capsys.readouterr().out


def test_a_model_that_runs_on_no_candidate_says_so_in_one_line(tmp_path, capsys):
    code, _ = _prune(tmp_path, image_model(50), "--ratio", "0.5")
    error = capsys.readouterr().err
    assert code == 1 and error.count("\n") == 1
    assert "the original model does not run on inputs x=1x3x224x224," in error
    assert "x=1x3x32x32 (onnxruntime: " in error and "--input-shape" in error
    code, report = _prune(tmp_path, image_model(50), "--ratio", "0.5", "--input-shape",
                          "x=1,3,50,50")  # fmt: skip
    assert code == 0 and report["input_shapes"] == {"x": [1, 3, 50, 50]}
    assert "input_notes" not in report


def test_given_shapes_are_not_replaced(tmp_path, capsys):
    code, _ = _prune(tmp_path, image_model(64), "--ratio", "0.5", "--input-shape", "x=1,3,8,8")
    error = capsys.readouterr().err
    assert code == 1 and "does not run on inputs x=1x3x8x8 (onnxruntime: " in error
    assert "x=1x3x64x64" not in error


def test_inputs_file_the_original_rejects(tmp_path, capsys):
    np.savez(tmp_path / "in.npz", x=_float(1, 3, 8, 8))
    code, _ = _prune(tmp_path, image_model(64), "--ratio", "0.5", "--inputs",
                     str(tmp_path / "in.npz"))  # fmt: skip
    error = capsys.readouterr().err
    assert code == 1 and error.count("\n") == 1
    assert "does not run on the inputs in" in error and "x=1x3x8x8" in error


def test_candidates_are_ordered_and_deterministic():
    shapes = candidate_shapes(image_model(64))
    assert [s["x"][2] for s in shapes] == list(CANDIDATE_DIMS)
    assert shapes == candidate_shapes(image_model(64))
    assert candidate_shapes(image_model(64), {"x": (1, 3, 9, 9)}) == [{"x": (1, 3, 9, 9)}]


def test_a_dim_name_shared_by_inputs_gets_one_size():
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", "s", 4])
    mask = helper.make_tensor_value_info("mask", TensorProto.INT64, ["n", "s"])
    model = _model([helper.make_node("Identity", ["x"], ["y"])], [x, mask], {}, ["n", "s", 4])
    assert input_shapes(model) == {"x": (1, 224, 4), "mask": (1, 224)}


# Token ids and sequence lengths.


def test_token_ids_cover_the_embedding_table():
    model = text_model(vocab=50)
    assert id_ranges(model) == {"ids": 50}
    ids = random_inputs(model, {"ids": (4, 64)})["ids"]
    assert ids.min() >= 0 and ids.max() < 50 and len(np.unique(ids)) > 10
    data = CalibrationData(random=64, shapes={"ids": (16,)})
    calibration = np.concatenate([b["ids"] for b in batches(model, data, 32)])
    assert calibration.max() < 50 and len(np.unique(calibration)) > 10


def test_the_position_table_limits_the_sequence_length():
    model = text_model(positions=8)
    assert max_positions(model) == 8 and max_positions(text_model()) is None
    assert input_shapes(model) == {"ids": (1, 8)}
    assert all(shapes["ids"][1] <= 8 for shapes in candidate_shapes(model))


def test_calibration_uses_the_given_shapes(tmp_path):
    code, report = _prune(tmp_path, text_model(), "--ratio", "0.5", "--criterion", "wanda",
                          "--calib-random", "8", "--input-shape", "ids=1,24")  # fmt: skip
    assert code == 0 and report["input_shapes"] == {"ids": [1, 24]}
    assert report["calibration"]["data"] == "8 random samples of ids=1x24 (seed 0)"


# The calibration batch.


def specialised_batch_model(static: bool) -> onnx.ModelProto:
    """Features [N, 4, 8] through a Reshape traced at batch 1. With a symbolic batch (as the
    dynamo exporter writes) the constant [1, 4, 8] fails at any other batch; with a static
    batch, relaxed, [1, -1, 8] runs but folds the batch into the sequence."""
    batch: int | str = 1 if static else "n"
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 4, 8])
    nodes = [
        helper.make_node("Reshape", ["x", "shape"], ["f"], name="fold"),
        helper.make_node("MatMul", ["f", "w1"], ["h"], name="up"),
        helper.make_node("Relu", ["h"], ["r"], name="relu"),
        helper.make_node("MatMul", ["r", "w2"], ["y"], name="down"),
    ]
    shape = [1, -1, 8] if static else [1, 4, 8]
    weights = {"shape": np.array(shape, np.int64), "w1": _float(8, 6), "w2": _float(6, 3)}
    return _model(nodes, [x], weights, [batch, 4, 3])


@pytest.mark.parametrize("static", [False, True], ids=["symbolic", "static"])
def test_a_batch_the_model_cannot_take_falls_back_and_says_so(tmp_path, capsys, static):
    code, report = _prune(tmp_path, specialised_batch_model(static), "--ratio", "0.5",
                          "--criterion", "wanda", "--calib-random", "40")  # fmt: skip
    assert code == 0
    calibration = report["calibration"]
    assert calibration["samples"] == 40 and calibration["batch"] == 1
    expected = "each other's outputs" if static else "does not run at batch 32"
    assert expected in calibration["batch_note"]
    assert "note: " in capsys.readouterr().out


def test_a_batch_the_model_takes_is_kept(tmp_path):
    model = gp.load(text_model())
    stats = collect(gp.analyze(model), CalibrationData(random=40, shapes={"ids": (16,)}))
    assert stats.batch == 32 and stats.batch_note is None and stats.samples == 40


# Options through compensation; progress output.


def test_compensation_keeps_prune_outputs(tmp_path):
    model = gp.load(text_model())  # "down" feeds the output: only prunable with the option
    analysis = gp.analyze(model, prune_outputs=True)
    data = CalibrationData(random=64, shapes={"ids": (16,)})
    stats = gp.calibrate(analysis, data, scatter=True)
    plan = gp.plan(analysis, gp.PlanOptions(ratio=0.5, criterion="wanda"), stats=stats)
    pruned = gp.compensate(analysis, plan, stats, method="lsq")
    feeds = random_inputs(model, {"ids": (1, 16)})
    assert run(session(pruned), feeds)[0].shape == (1, 16, 4)
    code, report = _prune(tmp_path, text_model(), "--ratio", "0.5", "--prune-outputs",
                          "--criterion", "wanda", "--calib-random", "16", "--compensate",
                          "lsq")  # fmt: skip
    assert code == 0 and report["validation"]["outputs"][0]["shape"] == [1, 16, 4]


def test_no_progress_bars_off_a_terminal(tmp_path, capsys):
    source = tmp_path / "model.onnx"
    onnx.save(text_model(), source)
    args = ["prune", str(source), "-o", str(tmp_path / "o.onnx"), "--ratio", "0.5"]
    assert main([*args, "--criterion", "wanda", "--calib-random", "8"]) == 0
    assert capsys.readouterr().err == ""


def test_a_failing_run_closes_its_progress_bar(tmp_path, capsys):
    folder = tmp_path / "calib"
    folder.mkdir()
    np.savez(folder / "a.npz", ids=np.zeros((4, 16), np.int64))
    np.savez(folder / "b.npz", other=np.zeros((4, 16), np.int64))
    analysis = gp.analyze(gp.load(text_model()))
    with pytest.raises(gp.GraphpruneError, match="lacks input"):
        collect(analysis, CalibrationData(path=str(folder)), batch=2, progress=True)
    assert capsys.readouterr().err.endswith("\r")  # the bar cleared its line, nothing left


def test_a_static_batch_that_runs_relaxed_keeps_the_batch():
    """Exports with a static batch of 1 (every zoo CNN) still calibrate 32 at a time."""
    analysis = gp.analyze(gp.load("models/example/resnet_tiny.onnx"))
    data = CalibrationData(random=40, shapes={"input": (3, 32, 32)})
    stats = collect(analysis, data)
    assert stats.batch == 32 and stats.batch_note is None and stats.samples == 40
