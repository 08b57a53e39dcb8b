"""Weights that stay on disk: a model loaded from a path keeps its main graph's external
initializers as references (`attach` makes their location absolute, so they can be read
from anywhere), read tensor by tensor only when a stage asks for them:

- `to_array` maps one tensor's bytes read-only (`np.memmap`): the pages it touches are
  the file's (shared, clean, dropped by the kernel under pressure), not the process's;
- `copy_to` streams one tensor's bytes into an open file, a few megabytes at a time;
- `materialized` is the tensor as `onnx.load_external_data_for_model` gives it (raw data
  in the proto, `data_location` DEFAULT set explicitly), for writers that inline it;
- `spill` turns a new array (a sliced weight) into such a reference to a private file,
  so the rewrite never holds more than one pruned weight in memory.

Such a tensor never leaves graphprune as a reference: every writer (`graphprune.io.large`)
inlines or copies its bytes, and onnxruntime is given models with external weights only
through those writers. The spill files live in one private temporary folder per process,
removed when the process exits.
"""

from __future__ import annotations

import atexit
import shutil
import tempfile
from pathlib import Path
from typing import BinaryIO

import numpy as np
import onnx
from onnx import numpy_helper

from .protos import all_tensors, element_count

_CHUNK = 2**24  # bytes copied at a time
# Tensors up to this many elements are read into memory rather than mapped: shape and
# index constants, which stages keep and read again and again.
_MAPPED_ELEMENTS = 4096
_ALIGN = 4096


def is_external(tensor: onnx.TensorProto) -> bool:
    return tensor.data_location == onnx.TensorProto.EXTERNAL


def _entries(tensor: onnx.TensorProto) -> dict[str, str]:
    return {entry.key: entry.value for entry in tensor.external_data}


def _where(tensor: onnx.TensorProto) -> tuple[str, int, int]:
    """(absolute file, offset, length) of an attached tensor's bytes."""
    entries = _entries(tensor)
    location = entries["location"]
    offset = int(entries.get("offset", "0"))
    length = int(entries.get("length", str(Path(location).stat().st_size - offset)))
    return location, offset, length


def data_length(tensor: onnx.TensorProto) -> int:
    """Bytes of a tensor's data, in the proto or on disk."""
    return _where(tensor)[2] if is_external(tensor) else tensor.ByteSize()


def attach(model: onnx.ModelProto, folder: Path) -> None:
    """Make the main graph's external initializers readable from anywhere (their
    location resolved against `folder`, already checked to lie inside it), and load the
    external data of every other tensor (Constant attributes, subgraph initializers:
    rare and small) into the proto as onnx would."""
    for tensor in model.graph.initializer:
        if is_external(tensor):
            for entry in tensor.external_data:
                if entry.key == "location":
                    entry.value = str((folder / entry.value).resolve())
    for node in model.graph.node:  # Constant attributes, subgraphs' initializers
        for attribute in node.attribute:
            nested = [attribute.t] if attribute.HasField("t") else []
            nested.extend(attribute.tensors)
            graphs = [attribute.g] if attribute.HasField("g") else []
            for graph in [*graphs, *attribute.graphs]:
                nested.extend(all_tensors(graph))
            for tensor in nested:
                if is_external(tensor):
                    onnx.external_data_helper.load_external_data_for_tensor(tensor, str(folder))
                    tensor.data_location = onnx.TensorProto.DEFAULT
                    del tensor.external_data[:]


def _dtype(tensor: onnx.TensorProto) -> np.dtype | None:
    """The numpy dtype whose bytes are the tensor's (None: packed below a byte, strings)."""
    if tensor.data_type == onnx.TensorProto.STRING:
        return None
    dtype = onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type)
    count = element_count(tensor.dims)
    if count and _where(tensor)[2] != count * dtype.itemsize:
        return None  # 4-bit and 2-bit types: onnx decodes them
    return dtype.newbyteorder("<") if dtype.kind in "iufc" else dtype


def to_array(tensor: onnx.TensorProto) -> np.ndarray:
    """The tensor's value; a read-only map of its file for large external tensors."""
    if not is_external(tensor):
        return numpy_helper.to_array(tensor)
    dtype = _dtype(tensor)
    count = element_count(tensor.dims)
    if dtype is None or count <= _MAPPED_ELEMENTS:
        return numpy_helper.to_array(materialized(tensor))
    location, offset, _ = _where(tensor)
    shape = tuple(int(d) for d in tensor.dims)
    return np.memmap(location, dtype=dtype, mode="r", offset=offset, shape=shape)


def read_bytes(tensor: onnx.TensorProto) -> bytes:
    location, offset, length = _where(tensor)
    with open(location, "rb") as source:
        source.seek(offset)
        return source.read(length)


def copy_to(tensor: onnx.TensorProto, out: BinaryIO) -> int:
    """Append the tensor's bytes to `out`, a chunk at a time; returns their length."""
    location, offset, length = _where(tensor)
    with open(location, "rb") as source:
        source.seek(offset)
        left = length
        while left:
            chunk = source.read(min(left, _CHUNK))
            if not chunk:
                raise OSError(f"{location} ends before the bytes of tensor '{tensor.name}'")
            out.write(chunk)
            left -= len(chunk)
    return length


def materialized(tensor: onnx.TensorProto) -> onnx.TensorProto:
    """A copy with the data in the proto, as `onnx.load_external_data_for_model` leaves a
    tensor (so writers give the bytes they gave when models were loaded whole)."""
    copy = onnx.TensorProto()
    copy.CopyFrom(tensor)
    if is_external(tensor):
        copy.raw_data = read_bytes(tensor)
        copy.data_location = onnx.TensorProto.DEFAULT
        del copy.external_data[:]
    return copy


class _Spill:
    """One private file (mode 0600 in a 0700 folder) that new weights are appended to."""

    def __init__(self) -> None:
        self.folder: Path | None = None
        self.offset = 0

    def put(self, tensor: onnx.TensorProto, value: np.ndarray) -> None:
        if self.folder is None:
            self.folder = Path(tempfile.mkdtemp(prefix="graphprune-weights-"))
            atexit.register(shutil.rmtree, self.folder, True)
        path = self.folder / "weights.bin"
        data = np.ascontiguousarray(value)
        with open(path, "ab") as out:
            padding = -self.offset % _ALIGN
            out.write(b"\0" * padding)
            self.offset += padding
            data.tofile(out)  # no bytes object of the whole weight
        tensor.ClearField("raw_data")
        del tensor.external_data[:]
        tensor.data_location = onnx.TensorProto.EXTERNAL
        for key, text in (("location", str(path)), ("offset", str(self.offset)),
                          ("length", str(data.nbytes))):  # fmt: skip
            tensor.external_data.add(key=key, value=text)
        self.offset += data.nbytes


_SPILL = _Spill()


def spill(tensor: onnx.TensorProto, value: np.ndarray) -> None:
    """Make `tensor` (its name, dims and type already set) hold `value` on disk."""
    _SPILL.put(tensor, value)
