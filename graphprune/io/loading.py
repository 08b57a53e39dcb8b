"""Loading ONNX models: a path (external data included) or a ModelProto, checked before any
stage reads it (`graphprune.io.wellformed`), node names made unique, and values known before
the run folded (`graphprune.io.folding`). `load_input` also records what the model's caller
relies on, read before anything changes: its interface and the ONNX checks it passes."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import onnx
from google.protobuf import json_format, text_format
from google.protobuf.message import DecodeError

from ..errors import GraphpruneError, first_line
from .checks import CheckLevel, check_level
from .external import attach
from .folding import fold_constants
from .interface import Interface, interface_of
from .paths import MISSING, file_problem, readable_file, shown
from .protos import all_graphs, all_tensors, byte_size, element_count, unique_name
from .wellformed import check_input_model, check_reads

_PARSE_ERRORS = (
    DecodeError, json_format.ParseError, text_format.ParseError, onnx.parser.ParseError,
)  # fmt: skip


@dataclass(frozen=True)
class InputModel:
    """A loaded model (`load_model`) with what its caller relied on as given: its
    interface (`graphprune.io.interface`) and the strictest ONNX check it passed."""

    model: onnx.ModelProto
    interface: Interface
    checks: CheckLevel


def load_model(source: str | os.PathLike | onnx.ModelProto) -> onnx.ModelProto:
    """Load a model from a path or copy a ModelProto. External data stays on disk
    (`graphprune.io.external`): the main graph's initializers refer to it by absolute path.

    The returned proto is ours to change: unnamed or duplicate node names are made unique
    so that every node can be referred to in groups, plans and reports.
    """
    model = _proto(source)
    _prepare(model)
    return model


def load_input(source: str | os.PathLike | onnx.ModelProto) -> InputModel:
    """`load_model`, with the interface and checker level of the model as given."""
    model = _proto(source)
    interface, checks = interface_of(model), check_level(model)
    _prepare(model)
    return InputModel(model, interface, checks)


def _proto(source: str | os.PathLike | onnx.ModelProto) -> onnx.ModelProto:
    if isinstance(source, onnx.ModelProto):
        model = onnx.ModelProto()
        model.CopyFrom(source)
    else:
        model = _read(Path(source))
    if not model.graph.node:
        raise GraphpruneError("the model has no nodes")
    check_input_model(model)
    return model


def _prepare(model: onnx.ModelProto) -> None:
    _name_nodes(model.graph)
    fold_constants(model)
    _unshare_dequantized_constants(model.graph)


def external_data_files(path: str | os.PathLike) -> set[Path]:
    """The files (resolved) whose bytes the model at `path` keeps as external data."""
    return _external_files(_parse(Path(path)), Path(path).parent)


def _read(path: Path) -> onnx.ModelProto:
    model = _parse(path)
    if not model.graph.node and not model.graph.input:
        raise GraphpruneError(f"{path} is not a valid ONNX model (empty graph)")
    check_reads(model.graph)
    _external_files(model, path.parent)
    try:  # the weights stay on disk, read tensor by tensor when a stage needs them
        attach(model, path.parent)
    except (OSError, ValueError, onnx.checker.ValidationError) as error:
        raise GraphpruneError(f"cannot read external data of {path}: {first_line(error)}") from None
    return model


def _parse(path: Path) -> onnx.ModelProto:
    readable_file(path, "the model")
    try:  # onnx reads .json and text formats by the file's suffix, each with its own error
        return onnx.load(str(path), load_external_data=False)
    except (*_PARSE_ERRORS, RuntimeWarning, ValueError, OSError) as error:
        raise GraphpruneError(
            f"{shown(path)} is not a valid ONNX model ({first_line(error)})"
        ) from None


def _external_files(model: onnx.ModelProto, folder: Path) -> set[Path]:
    return {
        _external_file(tensor, folder)
        for tensor in all_tensors(model.graph)
        if tensor.data_location == onnx.TensorProto.EXTERNAL
    }


def _external_file(tensor: onnx.TensorProto, folder: Path) -> Path:
    """The file of a tensor's external data, refused (one line) unless
    the file lies inside the model's folder (no `..`, absolute paths or links out of it),
    is a regular file that can be read (`graphprune.io.paths`) and the range lies inside
    the file and holds exactly the tensor's bytes."""
    entries = {entry.key: entry.value for entry in tensor.external_data}
    location = entries.get("location", "")
    where = f"external data of tensor '{shown(tensor.name)}'"
    relative = Path(location)
    if not location or "\0" in location or relative.is_absolute() or ".." in relative.parts:
        raise GraphpruneError(
            f"{where}: location '{shown(location)}' is not a file in the model's folder"
        )
    root = os.path.realpath(folder)
    # realpath leaves a link loop or an over-long name as it is: file_problem names them.
    file = Path(os.path.realpath(os.path.join(root, location)))
    if not file.is_relative_to(root):
        raise GraphpruneError(f"{where}: '{shown(location)}' leads outside the model's folder")
    problem = file_problem(file)
    if problem == MISSING:
        raise GraphpruneError(
            f"missing external data: no file '{shown(location)}' next to the model"
        )
    if problem is not None:
        raise GraphpruneError(f"{where}: cannot read '{shown(location)}': {problem}")
    size = file.stat().st_size
    offset = _integer(entries.get("offset", "0"), where, "offset")
    length = _integer(entries.get("length", str(size - offset)), where, "length")
    if offset < 0 or length < 0 or offset + length > size:
        raise GraphpruneError(
            f"{where}: bytes {offset}..{offset + length} are outside '{shown(location)}' "
            f"({size} bytes)"
        )
    expected = byte_size(tensor.data_type, element_count(tensor.dims))
    if expected is not None and length != expected:
        dims = list(tensor.dims)
        raise GraphpruneError(f"{where}: {length} bytes for dims {dims}, not {expected}")
    return file


def _integer(text: str, where: str, what: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise GraphpruneError(f"{where}: {what} {text!r} is not an integer") from None


def _name_nodes(graph: onnx.GraphProto) -> None:
    """Give unnamed nodes `<op>_<index>` and later duplicates a numbered suffix, across the
    main graph and every subgraph (edits name the If, Loop and Scan body nodes they change)."""
    nodes = [node for scope in all_graphs(graph) for node in scope.node]
    taken = {node.name for node in nodes if node.name}
    seen: set[str] = set()
    for index, node in enumerate(nodes):
        if node.name and node.name not in seen:
            seen.add(node.name)
            continue
        node.name = unique_name(node.name or f"{node.op_type}_{index}", taken)
        seen.add(node.name)


def _unshare_dequantized_constants(graph: onnx.GraphProto) -> None:
    """A DequantizeLinear of constants that several nodes read (a tied quantized weight, a
    shared bias or rotary table) becomes one per reader, all reading the same
    initializers: as a shared float constant gets a copy per use in the rewrite, each
    reader's channels then slice their own. Reads inside subgraphs keep the original."""
    constants = {tensor.name for tensor in graph.initializer}
    constants |= {n.output[0] for n in graph.node if n.op_type == "Constant" and n.output}
    readers: dict[str, list[tuple[int, int]]] = {}
    for position, node in enumerate(graph.node):
        for index, name in enumerate(node.input):
            readers.setdefault(name, []).append((position, index))
    node_names = {node.name for node in graph.node}
    tensor_names = {name for node in graph.node for name in [*node.input, *node.output]}
    nodes = []
    for node in graph.node:
        nodes.append(node)
        uses = readers.get(node.output[0], []) if node.output else []
        if node.op_type != "DequantizeLinear" or len(uses) < 2:
            continue
        if any(name and name not in constants for name in node.input):
            continue
        for position, index in uses[1:]:
            copy = onnx.NodeProto()
            copy.CopyFrom(node)
            copy.name = unique_name(node.name, node_names)
            copy.output[0] = unique_name(node.output[0], tensor_names)
            graph.node[position].input[index] = copy.output[0]
            nodes.append(copy)
    if len(nodes) != len(graph.node):
        del graph.node[:]
        graph.node.extend(nodes)
