"""The reference export: the module as graphprune analyses it for `apply_plan`, with every
constant traced back to the parameter or buffer it holds.

The dynamo exporter keeps parameter names, but its optimizer folds BatchNorm into the
Conv before it (the BatchNorm's parameters vanish from the graph) and folds a Linear
weight's transpose into a new, unnamed initializer. So the module is exported without
the optimizer, every computation on constants alone that reads a parameter (a weight's
transpose, a layer scale's reshape, Gemma's `1 + weight`) is folded here while the
positions are followed (`Origin`), and only then does onnxscript's constant folding tidy
the rest (a Conv's zero bias built from shapes) for the analysis; none of its rewrite
rules run (they fuse BatchNorm).
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper
from onnx.reference import ReferenceEvaluator

from ..errors import GraphpruneError, first_line
from ..io.protos import has_subgraphs, is_float

# Ops that only move values: run on positions instead of values, they say where each
# value of their output comes from. Concat may mix several constants (positions of the
# others are -1); the rest move their input 0 only.
_MOVES = {
    "Identity", "Transpose", "Reshape", "Unsqueeze", "Squeeze", "Flatten", "Expand", "Slice",
    "Gather", "GatherND", "GatherElements", "Concat", "Split", "Tile", "DepthToSpace",
    "SpaceToDepth",
}  # fmt: skip
_RANDOM = ("Random", "Bernoulli", "Multinomial")  # not folded: a value per run
# Elementwise ops: each output value comes from the same position of the one parameter
# operand (broadcast); other operands are constants that do not hold parameters.
_ELEMENTWISE = {
    "Add", "Sub", "Mul", "Div", "Pow", "Neg", "Sqrt", "Reciprocal", "Abs", "Exp", "Log",
    "Cast", "CastLike", "Relu", "Sigmoid", "Tanh", "Erf", "Softplus", "Clip", "Max", "Min",
}  # fmt: skip


@dataclass(frozen=True)
class Origin:
    """A constant of the reference export that holds values of one parameter or buffer
    (`state`, its name in `state_dict`): `index` holds each value's flat position in it
    (-1: not from it), or None when the constant is the parameter itself."""

    state: str
    index: np.ndarray | None = None

    def positions(self, shape: tuple[int, ...]) -> np.ndarray:
        """Flat positions in the parameter (of shape `shape`) of each value."""
        if self.index is not None:
            return self.index
        return np.arange(int(np.prod(shape, dtype=np.int64))).reshape(shape)


@dataclass
class Reference:
    """The reference export and where its constants come from."""

    model: onnx.ModelProto
    origins: dict[str, Origin]
    mixed: dict[str, str] = field(default_factory=dict)  # constant -> why it has no origin
    plain: set[str] = field(default_factory=set)  # constants that hold no parameter's values


def reference_export(module: Any, args: tuple, kwargs: dict | None = None) -> Reference:
    """Export `module` on the example inputs and trace its constants (see the module's
    docstring); a module the exporter refuses is a GraphpruneError."""
    import onnxscript.optimizer
    import torch

    logging.getLogger("torch.onnx._internal.exporter._registration").setLevel(logging.ERROR)
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            program = torch.onnx.export(
                module, args, kwargs=kwargs, dynamo=True, optimize=False, verbose=False,
                external_data=False,
            )  # fmt: skip
    except Exception as error:  # any exporter failure is the module's
        raise GraphpruneError(
            f"the dynamo exporter cannot export the module: {first_line(error)}"
        ) from None
    if program is None:
        raise GraphpruneError("the dynamo exporter returned no program")
    model = program.model_proto
    state = {name for name, _ in module.named_parameters()}
    state |= {name for name, _ in module.named_buffers()}
    origins = {
        tensor.name: Origin(tensor.name)
        for tensor in model.graph.initializer
        if tensor.name in state and is_float(tensor.data_type)
    }
    plain = {tensor.name for tensor in model.graph.initializer} - set(origins)
    mixed = _fold_state(model, origins, plain)
    # Constant folding and clean-up only: the default rewrite rules fuse BatchNorm.
    onnxscript.optimizer.fold_constants(model)
    onnxscript.optimizer.remove_unused_nodes(model)
    kept = {tensor.name for tensor in model.graph.initializer}
    return Reference(
        model,
        {name: origin for name, origin in origins.items() if name in kept},
        {name: why for name, why in mixed.items() if name in kept},
        plain & kept,
    )


def _fold_state(
    model: onnx.ModelProto, origins: dict[str, Origin], plain: set[str]
) -> dict[str, str]:
    """Fold every node whose inputs are all constants into an initializer, following the
    positions of parameters (`origins`) and adding constants without any to `plain`;
    returns the folded constants that mix several parameters (or compute with one) with
    the reason. Everything constant is folded here, so that no parameter's values reach a
    constant that the optimizer folds later under a new name."""
    graph = model.graph
    opsets = list(model.opset_import)
    initializers = {tensor.name: tensor for tensor in graph.initializer}
    values: dict[str, np.ndarray] = {}
    constants = set(initializers)
    mixed: dict[str, str] = {}

    def value(name: str) -> np.ndarray:
        if name not in values:
            values[name] = numpy_helper.to_array(initializers[name])
        return values[name]

    types = _known_types(model)
    folded: list[int] = []
    for position, node in enumerate(graph.node):
        if node.op_type == "Constant" and not has_subgraphs(node):
            try:
                values[node.output[0]] = _constant(node, opsets)
            except Exception:  # a value the reference evaluator cannot build: not folded
                continue
            constants.add(node.output[0])
            plain.add(node.output[0])
            continue
        outputs = _known_outputs(node, types, constants, value, opsets)
        if outputs is None:
            continue
        # Shape and Size read no values; CastLike reads input 0's values and 1's type.
        reads = {"Shape": 0, "Size": 0, "CastLike": 1}.get(node.op_type, len(node.input))
        traced = None
        if any(name in origins or name in mixed for name in node.input[:reads]):
            try:
                traced = _trace(node, outputs, origins, mixed, value, opsets)
            except Exception:  # an op the reference evaluator cannot run on positions
                traced = f"{node.op_type} moves parameter values in an unknown way"
        for name, output in zip(node.output, outputs, strict=True):
            values[name] = output
            constants.add(name)
            if traced is None:
                plain.add(name)
            elif isinstance(traced, str):
                mixed[name] = traced
            else:
                origins[name] = Origin(traced[0], traced[1].pop(0))
        folded.append(position)
    outputs = [name for position in folded for name in graph.node[position].output]
    for position in reversed(folded):
        del graph.node[position]
    graph.initializer.extend(numpy_helper.from_array(values[name], name) for name in outputs)
    return mixed


def _known_outputs(node, types, constants, value, opsets) -> list[np.ndarray] | None:
    """The node's outputs when they are known before the run: all its inputs are
    constants, or it reads only what is static (the shape of a tensor of static shape,
    the element type for CastLike); None otherwise."""
    names = [name for name in node.input if name]
    if not names or has_subgraphs(node) or node.op_type.startswith(_RANDOM):
        return None
    first = node.input[0]
    if node.op_type in ("Shape", "Size"):
        shape = value(first).shape if first in constants else types.get(first, (None, None))[1]
        if shape is None:
            return None
        if node.op_type == "Size":
            return [np.array(int(np.prod(shape, dtype=np.int64)), dtype=np.int64)]
        start = int(next((a.i for a in node.attribute if a.name == "start"), 0))
        end = next((a.i for a in node.attribute if a.name == "end"), None)
        return [np.array(shape[start:end], dtype=np.int64)]
    if node.op_type == "CastLike" and first in constants:
        dtype = value(node.input[1]).dtype if node.input[1] in constants else None
        dtype = dtype or types.get(node.input[1], (None, None))[0]
        return None if dtype is None else [value(first).astype(dtype)]
    if any(name not in constants for name in names):
        return None
    try:
        return _run(node, [value(name) if name else None for name in node.input], opsets)
    except Exception:  # an op the reference evaluator cannot run stays a node
        return None


def _known_types(model: onnx.ModelProto) -> dict[str, tuple[np.dtype | None, tuple | None]]:
    """Element type and static shape (None where a dim is symbolic) of every tensor the
    export declares."""
    found = {}
    graph = model.graph
    for info in [*graph.input, *graph.value_info, *graph.output]:
        tensor = info.type.tensor_type
        if not tensor.elem_type:
            continue
        dtype = helper.tensor_dtype_to_np_dtype(tensor.elem_type)
        dims = [d.dim_value if d.HasField("dim_value") else None for d in tensor.shape.dim]
        static = tensor.HasField("shape") and all(d is not None for d in dims)
        found[info.name] = (dtype, tuple(dims) if static else None)
    return found


def _constant(node: onnx.NodeProto, opsets) -> np.ndarray:
    return np.asarray(ReferenceEvaluator(_single(node, [], [], opsets)).run(None, {})[0])


def _trace(node, outputs, origins, mixed, value, opsets) -> tuple[str, list[np.ndarray]] | str:
    """(parameter, positions per output) for a node that moves one parameter's values;
    a reason when its outputs mix parameters or compute with them."""
    held = [(i, name) for i, name in enumerate(node.input) if name in origins or name in mixed]
    if any(name in mixed for _, name in held):
        return "computed from a constant that mixes parameters"
    states = {origins[name].state for _, name in held}
    if len(states) != 1:
        return f"{node.op_type} combines parameters {sorted(states)}"
    state = states.pop()
    positions = {i: origins[name].positions(value(name).shape) for i, name in held}
    if node.op_type in _MOVES and (node.op_type == "Concat" or list(positions) == [0]):
        feeds = []
        for i, name in enumerate(node.input):
            if i in positions:
                feeds.append(positions[i])
            elif node.op_type == "Concat":
                feeds.append(np.full(value(name).shape, -1, dtype=np.int64))
            else:
                feeds.append(value(name) if name else None)
        return state, [np.asarray(out) for out in _run(node, feeds, opsets)]
    if node.op_type in _ELEMENTWISE and len(positions) == 1:
        (index,) = positions.values()
        try:
            return state, [np.broadcast_to(index, np.shape(out)).copy() for out in outputs]
        except ValueError:
            pass
    return f"{node.op_type} computes with parameter '{state}'"


def _run(node: onnx.NodeProto, feeds: list, opsets) -> list[np.ndarray]:
    names = [name for name in node.input if name]
    arrays = [array for name, array in zip(node.input, feeds, strict=True) if name]
    model = _single(node, names, arrays, opsets)
    evaluator = ReferenceEvaluator(model)
    return [np.asarray(out) for out in evaluator.run(None, dict(zip(names, arrays, strict=True)))]


def _single(node: onnx.NodeProto, names, arrays, opsets=None) -> onnx.ModelProto:
    inputs = [
        helper.make_tensor_value_info(
            name, helper.np_dtype_to_tensor_dtype(np.asarray(array).dtype), np.shape(array)
        )
        for name, array in zip(names, arrays, strict=True)
    ]
    outputs = [helper.make_value_info(name, onnx.TypeProto()) for name in node.output]
    graph = helper.make_graph([node], "fold", inputs, outputs)
    kwargs = {"opset_imports": opsets} if opsets else {}
    return helper.make_model(graph, **kwargs)
