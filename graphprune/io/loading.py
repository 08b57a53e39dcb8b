"""Loading ONNX models: a path (external data included) or a ModelProto, node names made
unique, and values known before the run folded (`graphprune.io.folding`)."""

from __future__ import annotations

import os
from pathlib import Path

import onnx
from google.protobuf.message import DecodeError

from ..errors import GraphpruneError
from .folding import fold_constants
from .protos import unique_name


def load_model(source: str | os.PathLike | onnx.ModelProto) -> onnx.ModelProto:
    """Load a model from a path (external data included) or copy a ModelProto.

    The returned proto is ours to change: unnamed or duplicate node names are made unique
    so that every node can be referred to in groups, plans and reports.
    """
    if isinstance(source, onnx.ModelProto):
        model = onnx.ModelProto()
        model.CopyFrom(source)
    else:
        model = _read(Path(source))
    if not model.graph.node:
        raise GraphpruneError("the model has no nodes")
    _name_nodes(model.graph)
    fold_constants(model)
    return model


def _read(path: Path) -> onnx.ModelProto:
    if not path.is_file():
        raise GraphpruneError(f"no such file: {path}")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except (DecodeError, RuntimeWarning, ValueError) as error:
        raise GraphpruneError(f"{path} is not a valid ONNX model ({error})") from None
    if not model.graph.node and not model.graph.input:
        raise GraphpruneError(f"{path} is not a valid ONNX model (empty graph)")
    try:
        onnx.load_external_data_for_model(model, str(path.parent))
    except (FileNotFoundError, OSError, onnx.checker.ValidationError) as error:
        raise GraphpruneError(f"missing external data for {path}: {error}") from None
    return model


def _name_nodes(graph: onnx.GraphProto) -> None:
    """Give unnamed nodes `<op>_<index>` and later duplicates a numbered suffix."""
    taken = {node.name for node in graph.node if node.name}
    seen: set[str] = set()
    for index, node in enumerate(graph.node):
        if node.name and node.name not in seen:
            seen.add(node.name)
            continue
        node.name = unique_name(node.name or f"{node.op_type}_{index}", taken)
        seen.add(node.name)
