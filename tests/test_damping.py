"""Calibration that generalises: padding positions stay out of the statistics, and the
least-squares damping is chosen by held-out error on folds of the calibration data."""

from __future__ import annotations

import json
import math

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from oracle import outputs
from test_calibration import conv_model, gemm_model

import graphprune as gp
from graphprune.cli import main
from graphprune.posttrain import criteria
from graphprune.posttrain.compensation import least_squares, weight_matrix
from graphprune.posttrain.criteria import calibrated_scores
from graphprune.posttrain.damping import CANDIDATES, choose_damp, residual_error
from graphprune.posttrain.data import real_positions
from graphprune.posttrain.statistics import Moments, collect

rng = np.random.default_rng(0)


def _moments(rows: np.ndarray) -> Moments:
    moments = Moments(scatter=True)
    moments.update(rows)
    return moments


def _brute_force(rows: np.ndarray, k: int, weight, kept, damp: float) -> float:
    """Held-out error of the lsq fit, from the rows themselves: fold f = rows i % k == f."""
    error = lost = 0.0
    r = ~kept
    for fold in range(k):
        held = rows[np.arange(len(rows)) % k == fold]
        train = _moments(rows[np.arange(len(rows)) % k != fold])
        if math.isinf(damp):
            delta, shift = np.zeros_like(weight), train.mean[r] @ weight[r]
        else:
            delta, shift = least_squares(train.covariance, train.mean, weight, kept, damp)
        residual = held[:, kept] @ delta[kept] + shift - held[:, r] @ weight[r]
        error += (residual**2).sum()
        lost += ((held[:, r] @ weight[r]) ** 2).sum()
    return error / lost


def _folds(rows: np.ndarray, k: int) -> list[Moments]:
    return [_moments(rows[np.arange(len(rows)) % k == f]) for f in range(k)]


@pytest.mark.parametrize("noise", [0.05, 0.5, 5.0])
def test_chosen_damp_minimises_the_held_out_error(noise):
    # Removed features: a linear function of the kept ones plus noise; few rows per
    # feature, so an undamped fit follows the noise. The closed-form fold errors must be
    # the brute-force ones, and the choice their minimum.
    kept = np.array([True] * 12 + [False] * 6)
    base = rng.standard_normal((60, 12)) @ rng.standard_normal((12, 12))
    removed = base @ rng.standard_normal((12, 6)) * 0.3 + noise * rng.standard_normal((60, 6))
    rows = np.concatenate([base, removed], axis=1) + 1.5
    weight = rng.standard_normal((18, 5))
    choice = choose_damp(_folds(rows, 4), weight, kept)
    brute = [_brute_force(rows, 4, weight, kept, d) for d in CANDIDATES]
    np.testing.assert_allclose(choice.errors, brute, rtol=1e-6, atol=1e-9)
    assert choice.error == pytest.approx(min(brute), rel=1e-9)


def test_exact_relation_takes_the_least_damping_and_noise_takes_bias():
    kept = np.array([True] * 8 + [False] * 4)
    weight = rng.standard_normal((12, 3))
    base = rng.standard_normal((200, 8))
    exact = np.concatenate([base, base @ rng.standard_normal((8, 4))], axis=1)
    choice = choose_damp(_folds(exact, 4), weight, kept)
    assert choice.damp == CANDIDATES[0]
    assert choice.error < 1e-6
    # Removed features independent of the kept ones, and few rows: any fit of the kept
    # features is noise on held-out rows, so bias compensation (damp inf) wins.
    base = rng.standard_normal((24, 8))
    noise = np.concatenate([base, rng.standard_normal((24, 4))], axis=1)
    choice = choose_damp(_folds(noise, 4), weight, kept)
    assert math.isinf(choice.damp)
    assert choice.error <= min(choice.errors) + 1e-12


def test_too_few_folds_give_no_choice():
    rows = rng.standard_normal((3, 4))
    kept = np.array([True, True, False, False])
    assert choose_damp([_moments(rows), Moments(scatter=True)], np.ones((4, 2)), kept) is None


def test_residual_error_is_one_without_repair_and_zero_when_exact():
    base = rng.standard_normal((50, 3))
    rows = np.concatenate([base, base @ rng.standard_normal((3, 2))], axis=1)
    moments, weight = _moments(rows), rng.standard_normal((5, 2))
    kept = np.array([True, True, True, False, False])
    zero = np.zeros_like(weight)
    assert residual_error(moments, weight, kept, zero, np.zeros(2)) == pytest.approx(1.0)
    delta, shift = least_squares(moments.covariance, moments.mean, weight, kept, 1e-12)
    assert residual_error(moments, weight, kept, delta, shift) < 1e-9


def _token_model() -> onnx.ModelProto:
    """input_ids -> embedding -> MatMul -> Relu -> MatMul, times attention_mask: every
    position is computed on its own, so padding changes nothing but the positions."""
    nodes = [
        helper.make_node("Gather", ["table", "input_ids"], ["e"], name="embed"),
        helper.make_node("MatMul", ["e", "w1"], ["m"], name="fc1"),
        helper.make_node("Relu", ["m"], ["h"], name="act"),
        helper.make_node("MatMul", ["h", "w2"], ["o"], name="fc2"),
        helper.make_node("Cast", ["attention_mask"], ["mf"], name="cast", to=TensorProto.FLOAT),
        helper.make_node("Unsqueeze", ["mf", "axes"], ["mu"], name="unsqueeze"),
        helper.make_node("Mul", ["o", "mu"], ["y"], name="masked"),
    ]
    weights = {
        "table": rng.standard_normal((20, 6)).astype(np.float32),
        "w1": rng.standard_normal((6, 10)).astype(np.float32),
        "w2": rng.standard_normal((10, 4)).astype(np.float32),
        "axes": np.array([-1], dtype=np.int64),
    }
    graph = helper.make_graph(
        nodes, "tokens",
        [helper.make_tensor_value_info(n, TensorProto.INT64, ["B", "S"])
         for n in ("input_ids", "attention_mask")],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["B", "S", 4])],
        [numpy_helper.from_array(v, k) for k, v in weights.items()],
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return gp.load(model)


def _sentences(count: int) -> list[np.ndarray]:
    return [rng.integers(1, 20, size=int(rng.integers(2, 9))) for _ in range(count)]


def _padded(sentences: list[np.ndarray]) -> dict[str, np.ndarray]:
    longest = max(len(s) for s in sentences)
    ids = np.zeros((len(sentences), longest), dtype=np.int64)
    mask = np.zeros_like(ids)
    for i, sentence in enumerate(sentences):
        ids[i, : len(sentence)], mask[i, : len(sentence)] = sentence, 1
    return {"input_ids": ids, "attention_mask": mask}


def test_padding_positions_stay_out_of_the_statistics(tmp_path):
    model = _token_model()
    analysis = gp.analyze(model)
    sentences = _sentences(24)
    np.savez(tmp_path / "padded.npz", **_padded(sentences))
    (tmp_path / "by_length").mkdir()
    for length in sorted({len(s) for s in sentences}):
        ids = np.stack([s for s in sentences if len(s) == length]).astype(np.int64)
        np.savez(tmp_path / "by_length" / f"{length}.npz", input_ids=ids,
                 attention_mask=np.ones_like(ids))  # fmt: skip
    padded = collect(analysis, gp.CalibrationData(path=str(tmp_path / "padded.npz")),
                     batch=5, scatter=True)  # fmt: skip
    clean = collect(analysis, gp.CalibrationData(path=str(tmp_path / "by_length")),
                    batch=5, scatter=True)  # fmt: skip
    counted = collect(analysis, gp.CalibrationData(path=str(tmp_path / "padded.npz"),
                      mask="none"), batch=5, scatter=True)  # fmt: skip
    tokens = sum(len(s) for s in sentences)
    assert padded.mask == "attention_mask" and counted.mask is None
    assert padded.positions - padded.padding == tokens
    for key, moments in clean.moments.items():
        assert padded.moments[key].n == moments.n == tokens
        assert counted.moments[key].n > tokens
        np.testing.assert_allclose(padded.moments[key].mean, moments.mean, rtol=1e-9)
        np.testing.assert_allclose(padded.moments[key].scatter, moments.scatter, rtol=1e-9,
                                   atol=1e-9)  # fmt: skip
        assert not np.allclose(counted.moments[key].mean, moments.mean, rtol=1e-3)


def test_folds_merge_to_the_whole_and_do_not_depend_on_the_batch_size(tmp_path):
    model = _token_model()
    analysis = gp.analyze(model)
    np.savez(tmp_path / "c.npz", **_padded(_sentences(30)))
    data = gp.CalibrationData(path=str(tmp_path / "c.npz"))
    whole = collect(analysis, data, batch=7, scatter=True)
    small, large = (collect(analysis, data, batch=b, scatter=True, folds=4) for b in (3, 30))
    for key, folds in small.folds.items():
        assert len(folds) == 4 and sum(f.n for f in folds) == whole.moments[key].n
        for mine, other in zip(folds, large.folds[key], strict=True):
            assert mine.n == other.n
            np.testing.assert_allclose(mine.scatter, other.scatter, rtol=1e-9, atol=1e-9)
        np.testing.assert_allclose(small.moments[key].scatter, whole.moments[key].scatter,
                                   rtol=1e-9, atol=1e-9)  # fmt: skip
    assert small.summary()["folds"] == 4


def test_real_positions_layouts():
    mask = np.array([[1, 1, 0], [1, 0, 0]], dtype=bool)
    assert real_positions((2, 3), mask) is mask
    np.testing.assert_array_equal(real_positions((3, 2), mask), mask.T)
    np.testing.assert_array_equal(real_positions((6,), mask), mask.reshape(-1))
    assert real_positions((2, 4, 3), mask) is None


@pytest.mark.parametrize("criterion", ["flap", "obs"])
def test_auto_damping_through_the_command_line(tmp_path, criterion):
    model = _token_model()
    onnx.save(model, tmp_path / "m.onnx")
    np.savez(tmp_path / "c.npz", **_padded(_sentences(40)))
    feeds = _padded(_sentences(6))
    np.savez(tmp_path / "in.npz", **feeds)
    args = [
        "prune", str(tmp_path / "m.onnx"), "-o", str(tmp_path / "p.onnx"), "--ratio", "0.3",
        "--calib", str(tmp_path / "c.npz"), "--compensate", "lsq", "--damp", "auto",
        "--inputs", str(tmp_path / "in.npz"), "--report", str(tmp_path / "r.json"), "--quiet",
        "--criterion", criterion,
    ]  # fmt: skip
    assert main(args) == 0
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["compensation"]["damp"] == "auto"
    assert report["calibration"]["folds"] == 4
    assert report["calibration"]["padding_mask"] == "attention_mask"
    chosen = report["compensation"]["damping"]
    assert {c["node"] for c in chosen} == {"fc1", "fc2"}  # embedding width, hidden width
    assert all(c["damp"] == "bias" or c["damp"] in CANDIDATES for c in chosen)
    pruned = onnx.load(tmp_path / "p.onnx")
    assert outputs(pruned, feeds)[0].shape == outputs(model, feeds)[0].shape
    # Deterministic: the same input and options give the same bytes (folds, eigh, choice).
    again = tmp_path / "again.onnx"
    assert main([*args[:3], str(again), *args[4:]]) == 0
    assert again.read_bytes() == (tmp_path / "p.onnx").read_bytes()


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--damp", "lots"], "not a number or 'auto'"),
        (["--damp", "-1"], "--damp must be in"),
        (["--calib-mask", "nope"], "--calib-mask 'nope' is no model input"),
    ],
)
def test_bad_damping_options_are_one_line_errors(tmp_path, capsys, extra, message):
    onnx.save(_token_model(), tmp_path / "m.onnx")
    np.savez(tmp_path / "c.npz", **_padded(_sentences(8)))
    try:  # argparse refuses a value that is no number with a usage line and exit 2
        code = main([
            "prune", str(tmp_path / "m.onnx"), "-o", str(tmp_path / "p.onnx"), "--ratio", "0.3",
            "--calib", str(tmp_path / "c.npz"), "--compensate", "lsq", "--quiet", *extra,
        ])  # fmt: skip
    except SystemExit as exit_:
        code = exit_.code
    err = capsys.readouterr().err
    assert code != 0 and message in err
    assert not (tmp_path / "p.onnx").exists()


@pytest.mark.parametrize("build", [gemm_model, lambda kind: conv_model(kind, pads=1)], ids=str)
def test_obs_saliency_is_the_error_left_by_the_least_squares_repair(build, tmp_path, monkeypatch):
    # The known answer: removing class j alone and repairing with lsq leaves an output
    # error E||x_S D + beta - x_j W_j||^2; the OBS saliency is that number (a Conv's class
    # is a block of patch features). Checked against least_squares for every channel.
    monkeypatch.setattr(criteria, "OBS_DAMP", 1e-9)
    model = build("constant")
    analysis = gp.analyze(model)
    shape = [d.dim_value or 64 for d in model.graph.input[0].type.tensor_type.shape.dim]
    np.savez(tmp_path / "c.npz", x=rng.standard_normal([64, *shape[1:]]).astype(np.float32))
    data = gp.CalibrationData(path=str(tmp_path / "c.npz"))
    stats = gp.calibrate(analysis, data, scatter=True)
    consumer = next(c for c in stats.consumers if c.node in ("fc2", "conv2"))
    features = stats.features(consumer)
    weight, _ = weight_matrix(analysis, consumer)
    scores = criteria.obs_scores(analysis, consumer, features)
    size = consumer.geometry.size if consumer.geometry is not None else 1
    for channel in range(6):
        keep = np.arange(6) != channel
        kept = np.repeat(keep, size)
        delta, _ = least_squares(features.covariance, features.mean, weight, kept, 1e-9)
        residual = np.where(kept[:, None], delta, -weight)
        error = np.einsum("ij,ij->", residual, features.covariance @ residual)
        assert scores[channel] == pytest.approx(error, rel=1e-4, abs=1e-5 * scores.max())
    # Channels 4 and 5 are constant: nothing to repair, saliency ~0, removed first.
    plan = gp.plan(analysis, gp.PlanOptions(ratio=0.34, criterion="obs"), stats=stats)
    assert plan.choices[0].removed == [4, 5]
    # Without X^T X (no scatter) it is flap's score.
    plain = gp.calibrate(analysis, data)
    np.testing.assert_allclose(calibrated_scores(analysis, plain, "obs"),
                               calibrated_scores(analysis, plain, "flap"))  # fmt: skip
