"""ONNX element types as the lowering computes them.

Half precision (float16, bfloat16) computes in float32: the trained values are float32
master copies, written back in the model's own type (`writeback`), as mixed-precision
training keeps them. Everything else keeps its type.
"""

from __future__ import annotations

import numpy as np
import onnx
import torch

from .registry import Unsupported

_TORCH = {
    onnx.TensorProto.FLOAT: torch.float32,
    onnx.TensorProto.FLOAT16: torch.float32,
    onnx.TensorProto.BFLOAT16: torch.float32,
    onnx.TensorProto.DOUBLE: torch.float64,
    onnx.TensorProto.INT8: torch.int8,
    onnx.TensorProto.UINT8: torch.uint8,
    onnx.TensorProto.INT16: torch.int16,
    onnx.TensorProto.UINT16: torch.int32,  # torch has no unsigned 16/32-bit arithmetic
    onnx.TensorProto.INT32: torch.int32,
    onnx.TensorProto.UINT32: torch.int64,
    onnx.TensorProto.INT64: torch.int64,
    onnx.TensorProto.UINT64: torch.int64,
    onnx.TensorProto.BOOL: torch.bool,
}


def torch_dtype(data_type: int) -> torch.dtype:
    try:
        return _TORCH[data_type]
    except KeyError:
        name = onnx.TensorProto.DataType.Name(data_type) if data_type in (
            onnx.TensorProto.DataType.values()) else str(data_type)  # fmt: skip
        raise Unsupported(f"cannot train with tensors of element type {name}") from None


def to_tensor(array: np.ndarray) -> torch.Tensor:
    """A numpy array as the lowering holds it (half precision as float32)."""
    if array.dtype in (np.float16,) or array.dtype.name == "bfloat16":
        array = array.astype(np.float32)
    elif array.dtype in (np.uint16,):
        array = array.astype(np.int32)
    elif array.dtype in (np.uint32, np.uint64):
        array = array.astype(np.int64)
    return torch.from_numpy(np.array(array))  # a writable copy (0-d stays 0-d)
