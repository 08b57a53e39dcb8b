"""Folding computations whose values are known before the model runs.

Exporters often compute channel counts at runtime: the classic torch exporter slices
`chunk` halves with bounds from Shape->Gather->Div, Paddle reshapes constant biases
before adding them. With static channel dims those values are fixed, and folding them into
initializers lets the analysis map channels exactly and the rewrite fix the numbers.
Dims that are symbolic (batch, dynamic resolution) stay computed at runtime.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper
from onnx.reference import ReferenceEvaluator

from ..errors import InternalError
from .external import to_array
from .interface import call_problem, interface_of, list_initializers_as_inputs
from .protos import (
    constant_value,
    element_count,
    has_subgraphs,
    node_attribute,
    outer_scope_reads,
    unique_name,
)
from .shapes import infer_shapes

_FOLDABLE = {
    "Add", "Cast", "Ceil", "Concat", "ConstantOfShape", "Div", "Equal", "Expand", "Floor",
    "Gather", "Max", "Min", "Mod", "Mul", "Neg", "Range", "ReduceProd", "Reshape", "Slice",
    "Sqrt", "Squeeze", "Sub", "Transpose", "Unsqueeze", "Where",
}  # fmt: skip
_MAX_ELEMENTS = 1 << 24
_SMALL = 65536  # constants read as inputs of folding; larger ones are weights


_MAX_PASSES = 8


def fold_constants(model: onnx.ModelProto) -> int:
    """Fold in place; returns how many tensors became initializers.

    Each pass reads shapes inferred before it, so a value that only becomes known through
    a fold (Pad's computed pads, then Shape of its output, as Swin's window partition
    reads it) folds in the next pass.

    Postcondition: the model is called as before (the same required inputs and outputs,
    `graphprune.io.interface`); a default input whose initializer is folded away leaves
    the input list with it, and in IR < 4 each new initializer is listed as an input."""
    before = interface_of(model)
    total = 0
    for _ in range(_MAX_PASSES):
        folded = _fold_pass(model)
        total += folded
        if not folded:
            break
    problem = call_problem(before, interface_of(model))
    if problem is not None:
        raise InternalError(f"folding changed how the model is called: {problem}")
    return total


def _fold_pass(model: onnx.ModelProto) -> int:
    graph = model.graph
    known: dict[str, np.ndarray] = {
        t.name: to_array(t) for t in graph.initializer if element_count(t.dims) <= _SMALL
    }
    partial: dict[str, list[int | None]] = {}
    shapes = None
    opsets = list(model.opset_import)
    folded: dict[str, np.ndarray] = {}
    for node in graph.node:
        if node.op_type == "Constant":
            value = constant_value(node, max_elements=_SMALL)
            if value is not None:
                known[node.output[0]] = value
            continue
        if node.op_type == "Shape":
            shapes = shapes if shapes is not None else infer_shapes(model, symbolic=False)
            dims = shapes.get(node.input[0])
            if dims is None:
                continue
            start = int(node_attribute(node, "start", 0))
            end = int(node_attribute(node, "end", len(dims)))
            entries = [d if isinstance(d, int) else None for d in dims[start:end]]
            _record(node.output[0], entries, known, partial, folded)
            continue
        if node.op_type in ("Gather", "Slice") and node.input[0] in partial:
            entries = _index_partial(node, partial[node.input[0]], known)
            if entries is not None:
                scalar = node.op_type == "Gather" and known[node.input[1]].ndim == 0
                _record(node.output[0], entries, known, partial, folded, scalar)
            continue
        if node.op_type == "Identity" and node.input[0] in known:
            # Known behind Identity too (the classic exporter shares equal weights that
            # way). Shape vectors are replaced, since onnx's inference does not look
            # through Identity; float weights stay where they are.
            known[node.output[0]] = known[node.input[0]]
            if known[node.input[0]].dtype.kind in "iu":
                folded[node.output[0]] = known[node.input[0]]
            continue
        if node.op_type not in _FOLDABLE or len(node.output) != 1:
            continue
        inputs = [name for name in node.input if name]
        if not inputs or not all(name in known for name in inputs):
            continue
        value = _evaluate(node, known, opsets)
        if value is not None and value.size <= _MAX_ELEMENTS:
            known[node.output[0]] = value
            folded[node.output[0]] = value
    used = {
        name
        for node in graph.node
        if node.op_type != "Constant" and not all(o in known for o in node.output)
        for name in node.input
    }
    used |= {o.name for o in graph.output}
    replacements = {name: value for name, value in folded.items() if name in used}
    if not replacements:
        return 0
    taken = {t.name for t in graph.initializer} | {o for n in graph.node for o in n.output}
    renamed = {}
    for name, value in sorted(replacements.items()):
        new_name = unique_name(f"{name}_folded", taken)
        graph.initializer.append(numpy_helper.from_array(np.asarray(value, order="C"), new_name))
        renamed[name] = new_name
    for node in graph.node:
        for index, name in enumerate(node.input):
            if name in renamed:
                node.input[index] = renamed[name]
    for output in graph.output:
        if output.name in renamed:
            graph.node.add(
                op_type="Identity",
                input=[renamed[output.name]],
                output=[output.name],
                name=f"{output.name}_identity",
            )
    _remove_dead_nodes(graph)
    list_initializers_as_inputs(model)
    return len(renamed)


def _record(name, entries, known, partial, folded, scalar: bool = False) -> None:
    """A fully known value is folded (a 0-d array for a scalar); a partly known vector is
    kept for later Gathers and Slices."""
    if all(e is not None for e in entries):
        value = np.array(entries[0] if scalar else entries, dtype=np.int64)
        known[name] = value
        folded[name] = value
    elif not scalar:
        partial[name] = entries


def _index_partial(node, entries, known) -> list[int | None] | None:
    if node.op_type == "Gather":
        indices = known.get(node.input[1])
        if indices is None or indices.ndim > 1 or int(node_attribute(node, "axis", 0)) != 0:
            return None
        return [entries[int(i)] for i in indices.reshape(-1)]
    bounds = [known.get(name) if name else None for name in node.input[1:3]]
    if any(b is None for b in bounds) or (len(node.input) > 4 and node.input[4]):
        return None
    start, end = int(bounds[0][0]), int(bounds[1][0])
    return entries[slice(start, end)]


def _evaluate(node, known, opsets) -> np.ndarray | None:
    inputs = [
        onnx.helper.make_tensor_value_info(name, onnx.TensorProto.UNDEFINED, None)
        for name in node.input
        if name
    ]
    outputs = [onnx.helper.make_tensor_value_info(node.output[0], onnx.TensorProto.UNDEFINED, None)]
    graph = onnx.helper.make_graph([node], "fold", inputs, outputs)
    model = onnx.helper.make_model(graph, opset_imports=opsets)
    try:
        (value,) = ReferenceEvaluator(model).run(None, {n: known[n] for n in node.input if n})
    except Exception:  # anything the reference evaluator cannot do stays computed
        return None
    return np.asarray(value)


def _remove_dead_nodes(graph: onnx.GraphProto) -> None:
    needed = {o.name for o in graph.output}
    dead = []
    for index in range(len(graph.node) - 1, -1, -1):
        node = graph.node[index]
        subgraph_reads = has_subgraphs(node)
        if subgraph_reads or any(o in needed for o in node.output if o):
            needed |= {name for name in node.input if name}
            if subgraph_reads:
                needed |= outer_scope_reads(node)
        else:
            dead.append(index)
    _delete(graph.node, dead)
    used = {name for node in graph.node for name in node.input} | needed
    unused = {t.name for t in graph.initializer if t.name not in used}
    _delete(graph.initializer, [i for i, t in enumerate(graph.initializer) if t.name in unused])
    # A graph input backed by a removed initializer goes with it: left alone, it would be
    # an input the caller must now feed.
    _delete(graph.input, [i for i, info in enumerate(graph.input) if info.name in unused])


def _delete(container, indices: list[int]) -> None:
    """Delete in place, last first: rebuilding the field would copy every weight."""
    for index in sorted(indices, reverse=True):
        del container[index]
