"""The classic ONNX model zoo graphs that the onnx wheel ships as backend test data
(`onnx/backend/test/data/light`: AlexNet, DenseNet-121, Inception v1/v2, ResNet-50,
ShuffleNet, SqueezeNet, VGG-19, ZFNet-512; Caffe2 converts, IR 3, opset 9), the fast subset
of the corpus source `modelzoo` (tools/corpus/files.py, `python tools/bench_corpus.py
--source modelzoo` runs every variant).

Every one prunes into a model with the original's signature, runs on the original's
required inputs alone, and equals the masked original. As shipped, every Conv and Gemm
weight is the constant 0.02 (built by ConstantOfShape at run time): every channel equals
every other, and the softmax output is uniform, so that comparison cannot tell a wrong
slice from the right one. The random-weight copies (`corpus.files.randomized`, logits
instead of the final softmax) can, and the test shows it: the same pruned model with one
sliced weight off by one position fails the oracle. (Two small ones here; the corpus runs
all nine in every variant.)
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from corpus.evaluate import deviation
from corpus.files import LIGHT, logits, randomized
from onnx import numpy_helper

import graphprune as gp
from graphprune.io.checks import check_level, check_model
from graphprune.io.interface import interface_of, interface_problem
from graphprune.runtime.sessions import run, session

NAMES = sorted(path.stem.removeprefix("light_") for path in LIGHT.glob("light_*.onnx"))
RANDOMIZED = ["inception_v1", "squeezenet"]  # small and fast; without normalizations
TOLERANCE = 1e-4


def _signature(model: onnx.ModelProto):
    sess = session(model)
    return ([(i.name, i.type, i.shape) for i in sess.get_inputs()],
            [(o.name, o.type, o.shape) for o in sess.get_outputs()])  # fmt: skip


def _prune(raw: onnx.ModelProto):
    """Prune at 0.3 through the library's gate (checker and interface), then run the
    pruned model and the oracle on the original's required inputs only."""
    analysis = gp.analyze(gp.load(raw))
    plan = gp.plan(analysis, 0.3)
    pruned = gp.prune(analysis, plan, check=False)
    assert interface_problem(interface_of(raw), pruned) is None
    assert check_level(raw) == "full"
    check_model(pruned, level="full")
    assert _signature(pruned) == _signature(raw)
    rng = np.random.default_rng(0)
    feeds = {port.name: rng.standard_normal(port.dims).astype(np.float32)
             for port in interface_of(raw).required}  # fmt: skip
    assert len(feeds) == 1  # the image: every other graph input is a weight's default
    expected = run(session(gp.mask(analysis, plan)), feeds)
    actual = run(session(pruned), feeds)
    assert deviation(expected, actual) < TOLERANCE
    return analysis, pruned, feeds, expected


def test_all_nine_are_here():
    assert len(NAMES) == 9


@pytest.mark.parametrize("name", NAMES)
def test_classic_zoo_graph_prunes_with_its_signature(name):
    raw = onnx.load(LIGHT / f"light_{name}.onnx")
    analysis, _, _, expected = _prune(raw)
    # What the oracle cannot see as shipped: the weights are 0.02, every output entry equal.
    made = {n.output[0] for n in raw.graph.node if n.op_type == "ConstantOfShape"}
    folded = [t for t in analysis.view.model.graph.initializer
              if t.name.removesuffix("_folded") in made]  # fmt: skip
    assert folded and all(np.all(numpy_helper.to_array(t) == np.float32(0.02)) for t in folded)
    assert np.allclose(expected[0], expected[0].flat[0])


@pytest.mark.parametrize("name", RANDOMIZED)
def test_random_weight_copy_is_oracle_exact_and_a_wrong_slice_is_caught(name):
    raw = logits(randomized(onnx.load(LIGHT / f"light_{name}.onnx")))
    analysis, pruned, feeds, expected = _prune(raw)
    before = {t.name: list(t.dims) for t in analysis.view.model.graph.initializer}
    sliced = [t for t in pruned.graph.initializer
              if len(t.dims) == 4 and before.get(t.name, list(t.dims)) != list(t.dims)]  # fmt: skip
    assert sliced
    wrong = onnx.ModelProto()
    wrong.CopyFrom(pruned)
    tensor = next(t for t in wrong.graph.initializer if t.name == sliced[0].name)
    old, new = before[tensor.name], list(tensor.dims)
    axis = next(i for i in range(len(new)) if old[i] != new[i])
    value = np.roll(numpy_helper.to_array(tensor), 1, axis=axis)  # right count, wrong places
    tensor.CopyFrom(numpy_helper.from_array(value, tensor.name))
    assert deviation(expected, run(session(wrong), feeds)) > 10 * TOLERANCE
