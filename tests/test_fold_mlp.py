"""tools/fold_mlp.py (the neuron-folding bench): an MLP whose 2k hidden neurons are k exact
pairs folds into k neurons with the dense model's outputs; a generic one does not."""

from __future__ import annotations

import math

import fold_mlp
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import graphprune as gp
from graphprune.runtime.sessions import run, session

D, K, OUT, ROWS = 6, 5, 4, 200


def _mlp(w_up, b_up, w_down, b_down) -> onnx.ModelProto:
    """x @ w_up + b_up, erf GELU, @ w_down + b_down: the ONNX exporters' form."""
    inits = [numpy_helper.from_array(v.astype(np.float32), n) for n, v in
             [("w_up", w_up), ("b_up", b_up), ("w_down", w_down), ("b_down", b_down),
              ("root2", np.array(math.sqrt(2.0))), ("one", np.array(1.0)),
              ("half", np.array(0.5))]]  # fmt: skip
    nodes = [
        helper.make_node("MatMul", ["x", "w_up"], ["z0"], name="up"),
        helper.make_node("Add", ["z0", "b_up"], ["z"], name="up_bias"),
        helper.make_node("Div", ["z", "root2"], ["s"]),
        helper.make_node("Erf", ["s"], ["e"]),
        helper.make_node("Add", ["e", "one"], ["e1"]),
        helper.make_node("Mul", ["z", "e1"], ["g0"]),
        helper.make_node("Mul", ["g0", "half"], ["h"]),
        helper.make_node("MatMul", ["h", "w_down"], ["y0"], name="down"),
        helper.make_node("Add", ["y0", "b_down"], ["y"], name="down_bias"),
    ]
    graph = helper.make_graph(
        nodes, "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", D])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", OUT])], inits,
    )  # fmt: skip
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def _weights(paired: bool):
    rng = np.random.default_rng(0)
    w_up, b_up = rng.normal(size=(D, K)), rng.normal(size=K)
    if paired:  # each neuron twice, shuffled; the two copies' down rows differ
        order = rng.permutation(2 * K)
        w_up, b_up = np.hstack([w_up, w_up])[:, order], np.concatenate([b_up, b_up])[order]
    else:
        w_up, b_up = rng.normal(size=(D, 2 * K)), rng.normal(size=2 * K)
    return w_up, b_up, rng.normal(size=(2 * K, OUT)), rng.normal(size=OUT)


def _fold(model, method: str, damp):
    feeds = [{"x": np.random.default_rng(1).normal(size=(ROWS, D)).astype(np.float32)}]
    analysis = gp.analyze(model)
    mlps = fold_mlp.find_mlps(analysis)
    assert [(m.up_weight, m.down_weight, m.down_bias) for m in mlps] == [
        ("w_up", "w_down", "b_down")
    ]
    inputs = fold_mlp.capture(model, mlps, feeds)
    folded, _ = fold_mlp.fold_model(model, mlps, inputs, 0.5, method=method, damp=damp)
    widths = [numpy_helper.to_array(i).shape for i in folded.graph.initializer
              if i.name in ("w_up", "w_down")]  # fmt: skip
    assert widths == [(D, K), (K, OUT)]
    dense = run(session(model, "CPUExecutionProvider"), feeds[0])[0]
    return run(session(folded, "CPUExecutionProvider"), feeds[0])[0] - dense


@pytest.mark.parametrize("method", ["pairs", "kmeans"])
@pytest.mark.parametrize("damp", [None, "auto"])
def test_exact_pairs_fold_exactly(method, damp):
    assert np.abs(_fold(_mlp(*_weights(paired=True)), method, damp)).max() < 1e-4


def test_distinct_neurons_do_not_fold_exactly():
    # the oracle above can fail: halving a generic MLP changes its output, the re-fit
    # reduces the (squared, on the calibration rows) error and does not remove it
    model = _mlp(*_weights(paired=False))
    unfit, refit = (np.sqrt((_fold(model, "pairs", d) ** 2).mean()) for d in (None, "auto"))
    assert 0.1 < refit < unfit


def test_pairs_match_the_copies():
    w_up, b_up, w_down, _ = _weights(paired=True)
    x = np.random.default_rng(1).normal(size=(ROWS, D))
    assert fold_mlp.nearest(x, w_up, b_up).max() < 1e-6  # each has its copy
    labels = fold_mlp.cluster(x, w_up, b_up, w_down, K, method="pairs")
    for label in range(K):
        a, b = np.nonzero(labels == label)[0]
        assert np.allclose(w_up[:, a], w_up[:, b]) and b_up[a] == b_up[b]


def test_pruned_error_compares_pruning():
    # the bench's pruning baseline through the same re-fit: keeping every neuron is exact,
    # keeping half of a generic MLP is not
    x = [np.random.default_rng(1).normal(size=(ROWS, D))]
    for paired, kept, exact in [(False, np.ones(2 * K, bool), True),
                                (False, np.arange(2 * K) < K, False)]:  # fmt: skip
        model = _mlp(*_weights(paired))
        mlps = fold_mlp.find_mlps(gp.analyze(model))
        error = fold_mlp.pruned_error(mlps, model, x, [kept], "auto")
        assert (error < 1e-8) == exact, error
