"""The oracle every rewrite test uses, and a small ONNX graph builder for rule tests.

Oracle: prune, and separately zero in the *original* model exactly what removal removes
(the consumers' input weights of the removed channels). Both must compute the same
outputs. A wrong slice anywhere (source rows, consumer columns, offsets through Concat or
Split, a reshape constant) makes them differ; `test_oracle_catches_wrong_slices` shows it.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

import graphprune as gp
from graphprune.io.shapes import infer_shapes
from graphprune.runtime.inputs import input_shapes, random_inputs
from graphprune.runtime.sessions import run, session


def outputs(model: onnx.ModelProto, feeds: dict) -> list[np.ndarray]:
    return run(session(model, "CPUExecutionProvider"), feeds)


def assert_same_outputs(expected: list[np.ndarray], actual: list[np.ndarray], rtol=1e-4):
    assert len(expected) == len(actual)
    for a, b in zip(expected, actual, strict=True):
        assert a.shape == b.shape
        # Outputs that are ~0 everywhere (a detector on noise) leave only float32 rounding:
        # below 1e-2 the scale is taken as 1e-2.
        scale = max(float(np.abs(a).max()) if a.size else 0.0, 1e-2)
        # fp16 models round every op to 11 bits: a few ulps apart is the same computation
        # (a wrong slice is off by the size of the values).
        tolerance = max(rtol, 10 * float(np.finfo(a.dtype).eps)) if a.dtype.kind == "f" else rtol
        np.testing.assert_allclose(b, a, rtol=tolerance, atol=tolerance * scale)


def prune_and_check(model: onnx.ModelProto, ratio: float = 0.5, feeds=None, **options):
    """Prune at `ratio`, check the oracle, return (analysis, plan, pruned)."""
    model = gp.load(model)
    analysis = gp.analyze(model)
    plan = gp.plan(analysis, gp.PlanOptions(ratio=ratio, **options))
    pruned = gp.prune(analysis, plan)
    feeds = feeds or random_inputs(model, input_shapes(model), seed=1)
    assert_same_outputs(outputs(gp.mask(analysis, plan), feeds), outputs(pruned, feeds))
    return analysis, plan, pruned


class GraphBuilder:
    """Tiny ONNX graphs with random weights, one call per op."""

    def __init__(self, opset: int = 18, seed: int = 0) -> None:
        self.opset = opset
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self.inputs: list[onnx.ValueInfoProto] = []
        self.outputs: list[str] = []
        self.rng = np.random.default_rng(seed)
        self.count = 0

    def _name(self, prefix: str) -> str:
        self.count += 1
        return f"{prefix}_{self.count}"

    def input(self, shape, name: str = "x") -> str:
        self.inputs.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, shape))
        return name

    def const(self, value, name: str | None = None) -> str:
        name = name or self._name("c")
        self.initializers.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    def weight(self, *shape) -> str:
        return self.const(self.rng.standard_normal(shape).astype(np.float32) * 0.5)

    def op(self, op_type: str, inputs, outputs: int = 1, domain: str = "", **attrs):
        names = [self._name(op_type.lower()) for _ in range(outputs)]
        self.nodes.append(
            helper.make_node(
                op_type, list(inputs), names, name=self._name(op_type), domain=domain, **attrs
            )
        )
        return names[0] if outputs == 1 else names

    def conv(self, x: str, cin: int, cout: int, k: int = 3, group: int = 1, dims: int = 2):
        w = self.weight(cout, cin // group, *([k] * dims))
        return self.op("Conv", [x, w, self.weight(cout)], pads=[k // 2] * 2 * dims, group=group)

    def output(self, name: str) -> None:
        self.outputs.append(name)

    def model(self) -> onnx.ModelProto:
        untyped = [helper.make_empty_tensor_value_info(name) for name in self.outputs]
        graph = helper.make_graph(self.nodes, "test", self.inputs, untyped, self.initializers)
        domains = sorted({node.domain for node in self.nodes} - {""})
        opsets = [helper.make_opsetid("", self.opset)]
        opsets += [helper.make_opsetid(domain, 1) for domain in domains]
        model = helper.make_model(graph, opset_imports=opsets)
        model.ir_version = 8
        shapes = infer_shapes(model)
        del model.graph.output[:]
        model.graph.output.extend(
            helper.make_tensor_value_info(name, TensorProto.FLOAT, shapes[name])
            for name in self.outputs
        )
        onnx.checker.check_model(model, full_check=True)
        return model
