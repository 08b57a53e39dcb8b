"""Models past protobuf's 2 GB limit: a whole ModelProto of that size can be neither
serialized nor sized (`ByteSize` raises), so nothing here does either.

`too_large` tells such models apart from the sum of their tensors' sizes; `heavy` also
takes models with a few hundred megabytes of weights, which are cheaper to check and run
that way than serialized whole (onnxruntime given 2 GB of bytes holds about 4x their size
at once; given a file, about 1x); `weightless` is
the model without its large weights (initializers become typed graph inputs) for the ONNX
checker; `write_external` streams the weights tensor by tensor into one external-data file
next to a small .onnx file and never changes the model it writes (onnx's own
`save_model(save_as_external_data=True)` moves the weights out of the proto it is given);
`temporary_copy` is such a copy in a private temporary folder, removed afterwards, for
onnxruntime to load by path.
"""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Iterator
from pathlib import Path

import onnx
from google.protobuf.message import EncodeError
from tqdm import tqdm

import graphprune.io.protos as protos  # the module, not the package's face (io/__init__)

from .external import copy_to, data_length, is_external, materialized

# Tensors of at least this many bytes go to external data (onnx's default threshold);
# their offsets are aligned so that onnxruntime can map them.
EXTERNAL_THRESHOLD = 1024
_ALIGN = 4096
# Models with this many bytes of initializers or more are checked without their weights
# and given to onnxruntime by path, as models past the protobuf limit must be.
HEAVY_BYTES = 2**28


def too_large(model: onnx.ModelProto) -> bool:
    """Whether `model` is past the protobuf limit (`protos.PROTOBUF_LIMIT`, read on each
    call) and must be written with external data."""
    return _past(model, protos.PROTOBUF_LIMIT)


def heavy(model: onnx.ModelProto) -> bool:
    """Whether `model` is checked without its weights and run from a temporary path: past
    the protobuf limit, with `HEAVY_BYTES` of weights or more, or with weights on disk
    (`graphprune.io.external`: only graphprune's writers can read those)."""
    if any(is_external(tensor) for tensor in model.graph.initializer):
        return True
    return _past(model, min(HEAVY_BYTES, protos.PROTOBUF_LIMIT))


def weight_bytes(model: onnx.ModelProto) -> int:
    """Bytes of the main graph's initializers, in the proto or on disk."""
    return sum(data_length(tensor) for tensor in model.graph.initializer)


def _past(model: onnx.ModelProto, limit: int) -> bool:
    data = 0
    for tensor in model.graph.initializer:
        data += data_length(tensor)
        if data >= limit:
            return True
    if any(is_external(tensor) for tensor in model.graph.initializer):
        return False  # the proto without that data is small
    try:
        return model.ByteSize() >= limit
    except (EncodeError, ValueError):  # upb refuses to size a message past 2 GB
        return True


def _is_large(tensor: onnx.TensorProto) -> bool:
    return (
        tensor.data_location != onnx.TensorProto.EXTERNAL
        and tensor.HasField("raw_data")
        and tensor.ByteSize() >= EXTERNAL_THRESHOLD
    )


def shell(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of everything but the main graph's initializers (left empty)."""
    copy = onnx.ModelProto()
    _copy_fields(model, copy, skip="graph")
    _copy_fields(model.graph, copy.graph, skip="initializer")
    return copy


def _copy_fields(source, target, skip: str) -> None:
    for field, value in source.ListFields():
        if field.name == skip:
            continue
        if hasattr(value, "extend"):  # repeated (scalars or messages)
            getattr(target, field.name).extend(value)
        elif hasattr(value, "CopyFrom"):
            getattr(target, field.name).CopyFrom(value)
        else:
            setattr(target, field.name, value)


def weightless(model: onnx.ModelProto) -> onnx.ModelProto:
    """The model with its large initializers turned into graph inputs of their type and
    shape: what the checker and shape inference need, in a few megabytes."""
    skeleton = shell(model)
    inputs = {info.name for info in model.graph.input}
    for tensor in model.graph.initializer:
        if _is_large(tensor) or tensor.data_location == onnx.TensorProto.EXTERNAL:
            if tensor.name not in inputs:
                info = onnx.helper.make_tensor_value_info(
                    tensor.name, tensor.data_type, list(tensor.dims)
                )
                skeleton.graph.input.append(info)
        else:
            skeleton.graph.initializer.append(tensor)
    return skeleton


def hollow(model: onnx.ModelProto) -> onnx.ModelProto:
    """The model with its large initializers reduced to name, type and dims (no data):
    enough to count parameters, nothing to run."""
    copy = shell(model)
    for tensor in model.graph.initializer:
        if _is_large(tensor):
            copy.graph.initializer.add(name=tensor.name, dims=tensor.dims,
                                       data_type=tensor.data_type)  # fmt: skip
        else:
            copy.graph.initializer.append(tensor)
    return copy


def write_external(
    model: onnx.ModelProto, path: str | Path, data_name: str, *, progress: bool = False
) -> None:
    """Write `model` to `path` with every initializer of `EXTERNAL_THRESHOLD` bytes or more
    in `data_name` (next to it), one tensor at a time, in initializer order (the same
    model gives the same bytes). `model` is not changed; `progress` shows a bar of bytes."""
    path = Path(path)
    skeleton = shell(model)
    offset = 0
    with open(path.parent / data_name, "wb") as data, _bar(model, progress) as bar:
        for tensor in _counted(model.graph.initializer, bar):
            if is_external(tensor) and data_length(tensor) < EXTERNAL_THRESHOLD:
                tensor = materialized(tensor)  # as small as when loaded whole
            if not _is_large(tensor) and not is_external(tensor):
                skeleton.graph.initializer.append(tensor)
                continue
            padding = -offset % _ALIGN
            data.write(b"\0" * padding)
            offset += padding
            if is_external(tensor):  # streamed from its file, a chunk at a time
                length = copy_to(tensor, data)
            else:
                raw = tensor.raw_data  # one tensor's bytes at a time
                data.write(raw)
                length = len(raw)
                del raw
            reference = skeleton.graph.initializer.add()
            reference.name = tensor.name
            reference.dims.extend(tensor.dims)
            reference.data_type = tensor.data_type
            if tensor.doc_string:
                reference.doc_string = tensor.doc_string
            reference.data_location = onnx.TensorProto.EXTERNAL
            for key, value in (("location", data_name), ("offset", str(offset)),
                               ("length", str(length))):  # fmt: skip
                reference.external_data.add(key=key, value=value)
            offset += length
    path.write_bytes(skeleton.SerializeToString(deterministic=True))


def write_inline(model: onnx.ModelProto, path: str | Path, *, progress: bool = False) -> None:
    """Write the bytes of `model.SerializeToString(deterministic=True)` to `path` one
    initializer at a time, never holding the whole serialization: protobuf writes fields in
    field-number order, and a message is the concatenation of its fields, so the model is
    its fields before `graph`, the graph (its fields before `initializer`, each initializer
    as a length-delimited field, the fields after), then the fields after `graph`."""
    graph = model.graph
    graph_number = model.DESCRIPTOR.fields_by_name["graph"].number
    initializer_number = graph.DESCRIPTOR.fields_by_name["initializer"].number
    before, after = _split(model, graph_number, "graph")
    graph_before, graph_after = _split(graph, initializer_number, "initializer")
    sizes = [_inline_size(tensor) for tensor in graph.initializer]
    tag = _varint(initializer_number << 3 | 2)
    graph_size = len(graph_before) + len(graph_after)
    graph_size += sum(len(tag) + len(_varint(size)) + size for size in sizes)
    with open(path, "wb") as out, _bar(model, progress) as bar:
        out.write(before)
        if model.HasField("graph"):
            out.write(_varint(graph_number << 3 | 2) + _varint(graph_size) + graph_before)
            for tensor, size in zip(_counted(graph.initializer, bar), sizes, strict=True):
                out.write(tag + _varint(size))
                if is_external(tensor):  # read from disk only now, one tensor at a time
                    tensor = materialized(tensor)
                out.write(tensor.SerializeToString(deterministic=True))
            out.write(graph_after)
        out.write(after)


def _bar(model: onnx.ModelProto, progress: bool) -> tqdm:
    total = sum(data_length(tensor) for tensor in model.graph.initializer)
    return tqdm(total=total, desc="save", unit="B", unit_scale=True, disable=not progress,
                leave=False)  # fmt: skip


def _counted(tensors, bar: tqdm) -> Iterator[onnx.TensorProto]:
    for tensor in tensors:
        yield tensor
        bar.update(data_length(tensor))


def _inline_size(tensor: onnx.TensorProto) -> int:
    """The serialized size of the tensor with its data in the proto, without reading it."""
    if not is_external(tensor):
        return tensor.ByteSize()
    shell = onnx.TensorProto()
    shell.CopyFrom(tensor)
    del shell.external_data[:]
    shell.data_location = onnx.TensorProto.DEFAULT
    length = data_length(tensor)
    raw_number = tensor.DESCRIPTOR.fields_by_name["raw_data"].number
    return shell.ByteSize() + len(_varint(raw_number << 3 | 2)) + len(_varint(length)) + length


def _split(message, number: int, skip: str) -> tuple[bytes, bytes]:
    """The serialized fields of `message` numbered below and above `number` (`skip`)."""
    parts = (type(message)(), type(message)())
    for field, value in message.ListFields():
        if field.name == skip:
            continue
        target = parts[field.number > number]
        if hasattr(value, "extend"):
            getattr(target, field.name).extend(value)
        elif hasattr(value, "CopyFrom"):
            getattr(target, field.name).CopyFrom(value)
        else:
            setattr(target, field.name, value)
    return tuple(part.SerializeToString(deterministic=True) for part in parts)


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


@contextlib.contextmanager
def temporary_copy(model: onnx.ModelProto) -> Iterator[Path]:
    """`model` written with external data into a private temporary folder (mode 0700,
    under the system's temporary directory, never the working directory), removed when
    the block ends."""
    with tempfile.TemporaryDirectory(prefix="graphprune-") as folder:
        path = Path(folder) / "model.onnx"
        write_external(model, path, "model.onnx.data")
        yield path
