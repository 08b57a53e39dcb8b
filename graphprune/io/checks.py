"""Gates on models: the input is well formed before any stage reads it (every tensor's
element type is known and its data holds exactly its dims' elements, every fed input has a
known element type), and a model graphprune writes passes what its input passes."""

from __future__ import annotations

import onnx
from onnx import numpy_helper

from ..errors import GraphpruneError, first_line
from .large import heavy, weightless
from .protos import (
    all_tensors,
    byte_size,
    element_count,
    graph_inputs,
    known_type,
    outer_scope_reads,
)

# Tensors without raw bytes up to this many elements are decoded to check them; larger ones
# in typed fields are rare (writers use raw_data) and only their field length is checked.
_DECODED_ELEMENTS = 2**20


def check_input_model(model: onnx.ModelProto) -> None:
    """Raise a one-line GraphpruneError for tensors or inputs no stage could read."""
    for tensor in all_tensors(model.graph):
        problem = tensor_problem(tensor)
        if problem is not None:
            raise GraphpruneError(f"tensor '{tensor.name}' {problem}")
    _check_names(model.graph)
    for info in graph_inputs(model):
        kind = info.type.WhichOneof("value")
        if kind == "tensor_type" and not known_type(info.type.tensor_type.elem_type):
            elem = info.type.tensor_type.elem_type
            raise GraphpruneError(f"input '{info.name}' has an unknown element type ({elem})")


def _check_names(graph: onnx.GraphProto) -> None:
    """Every tensor has one source (graph input, initializer or one node output: ONNX graphs
    are single assignment), and every tensor a node or its subgraphs read has one."""
    initializers = [tensor.name for tensor in graph.initializer]
    sources = set(initializers) | {info.name for info in graph.input}
    if len(set(initializers)) != len(initializers):
        raise GraphpruneError("two initializers have the same name")
    for node in graph.node:
        for name in filter(None, node.output):
            if name in sources:
                raise GraphpruneError(f"tensor '{name}' has two sources (node '{node.name}')")
            sources.add(name)
    for node in graph.node:
        missing = sorted(({*node.input} | outer_scope_reads(node)) - sources - {""})
        if missing:
            raise GraphpruneError(
                f"node '{node.name}' ({node.op_type}) reads '{missing[0]}', which no node, "
                "input or initializer provides"
            )


def tensor_problem(tensor: onnx.TensorProto) -> str | None:
    """What is wrong with a tensor's type, dims or in-proto data (None: nothing)."""
    dims = list(tensor.dims)
    if any(d < 0 for d in dims):
        return f"has negative dims {dims}"
    if not known_type(tensor.data_type):
        return f"has an unknown element type ({tensor.data_type})"
    if tensor.data_location == onnx.TensorProto.EXTERNAL:
        return None  # checked where its file is read (graphprune.io.loading)
    count = element_count(dims)
    if tensor.HasField("raw_data"):
        expected = byte_size(tensor.data_type, count)
        if expected is not None and len(tensor.raw_data) != expected:
            return f"of dims {dims} holds {len(tensor.raw_data)} bytes, not {expected}"
        return None
    if count > _DECODED_ELEMENTS:
        return None if _typed_length(tensor) else f"of dims {dims} holds no data"
    try:
        numpy_helper.to_array(tensor)
    except Exception as error:  # onnx raises several types for data that does not fit
        return f"of dims {dims} cannot be decoded: {first_line(error)}"
    return None


def _typed_length(tensor: onnx.TensorProto) -> int:
    fields = (tensor.float_data, tensor.int32_data, tensor.int64_data, tensor.double_data,
              tensor.uint64_data, tensor.string_data)  # fmt: skip
    return sum(len(field) for field in fields)

_CHECKER_ERRORS = (onnx.checker.ValidationError, onnx.shape_inference.InferenceError)


def check_model(model: onnx.ModelProto, *, original: onnx.ModelProto | None = None) -> None:
    """Raise a one-line GraphpruneError when the ONNX checker rejects `model`: the full
    checker, or the strictest check `original` passes. onnxruntime runs graphs onnx cannot
    check (its contrib ops written into the default domain, as its transformer optimizer
    does); those rest on onnxruntime's validation alone. Models over the protobuf limit
    (or with hundreds of megabytes of weights, `graphprune.io.large.heavy`) are checked
    without their large weights, typed graph inputs in their place: the checker would
    serialize them whole (twice the model), and their data was checked at load."""
    if heavy(model):
        model = weightless(model)
    if original is not None and heavy(original):
        original = weightless(original)
    for full_check in (True, False):
        if original is None or _passes(original, full_check):
            try:
                onnx.checker.check_model(model, full_check=full_check)
            except _CHECKER_ERRORS as error:
                message = f"the pruned model fails the ONNX checker: {first_line(error)}"
                raise GraphpruneError(message) from None
            return


def _passes(model: onnx.ModelProto, full_check: bool) -> bool:
    try:
        onnx.checker.check_model(model, full_check=full_check)
    except _CHECKER_ERRORS:
        return False
    return True
