"""Trained values back into the pruned model: a copy of it in which only the values of the
trained constants change (initializers, or Constant nodes' values where the exporter kept
weights there), each in its own element type and shape. Nodes, names, inputs, outputs,
types and quantization parameters stay exactly as they were."""

from __future__ import annotations

import numpy as np
import onnx

from ..errors import InternalError
from .lowering import stored_tensors

_TYPED_FIELDS = ("float_data", "int32_data", "int64_data", "double_data", "uint64_data",
                 "string_data", "external_data")  # fmt: skip


def write_weights(model: onnx.ModelProto, arrays: dict[str, np.ndarray]) -> onnx.ModelProto:
    """A copy of `model` with the constants named in `arrays` holding those values."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    stored = stored_tensors(out)
    for name, array in arrays.items():
        tensor = stored.get(name)
        if tensor is None:
            raise InternalError(f"trained weight {name!r} is not stored in the model")
        expected = onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type)
        if array.dtype != expected or list(array.shape) != list(tensor.dims):
            raise InternalError(f"trained weight {name!r} changed type or shape")
        for field in _TYPED_FIELDS:
            tensor.ClearField(field)
        tensor.data_location = onnx.TensorProto.DEFAULT
        # raw_data is little-endian, as onnx's own numpy_helper writes it.
        tensor.raw_data = np.ascontiguousarray(array).astype(expected.newbyteorder("<")).tobytes()
    return out
