"""Reading quantized weights: their real values, their zero points, sub-byte packing.

A quantized constant (`channels.Quantized`) holds integers q whose real value is
(q - zero_point) * scale. Importance ranks channels by the real values, so a quantized
layer is scored like its float original; the masking oracle sets a removed position to its
zero point, the integer that dequantizes to exactly 0.
"""

from __future__ import annotations

import numpy as np
from onnx import TensorProto

from .channels import Quantized


def unpack(value: np.ndarray, bits: int, axis: int = -1) -> np.ndarray:
    """Split each byte into 8 // bits values along `axis`, low bits first."""
    per_byte = 8 // bits
    value = np.moveaxis(np.asarray(value, dtype=np.uint8), axis, -1)
    shifts = np.arange(per_byte, dtype=np.uint8) * bits
    parts = (value[..., None] >> shifts) & np.uint8((1 << bits) - 1)
    parts = parts.reshape(*value.shape[:-1], value.shape[-1] * per_byte)
    return np.moveaxis(parts, -1, axis)


def pack(values: np.ndarray, bits: int, axis: int = -1) -> np.ndarray:
    """The inverse of `unpack`; a last byte that is not full is padded with zeros."""
    per_byte = 8 // bits
    values = np.moveaxis(np.asarray(values, dtype=np.uint8), axis, -1)
    padding = -values.shape[-1] % per_byte
    if padding:
        values = np.concatenate(
            [values, np.zeros((*values.shape[:-1], padding), dtype=np.uint8)], axis=-1
        )
    groups = values.reshape(*values.shape[:-1], -1, per_byte)
    shifts = np.arange(per_byte, dtype=np.uint8) * bits
    packed = np.bitwise_or.reduce(groups << shifts, axis=-1).astype(np.uint8)
    return np.moveaxis(packed, -1, axis)


def _broadcast(parameter: np.ndarray, quant: Quantized, shape: tuple[int, ...]) -> np.ndarray:
    """A per-tensor, per-axis or blocked scale or zero point, as an array of `shape`."""
    parameter = np.asarray(parameter)
    if quant.axis is None or parameter.size == 1:
        return np.broadcast_to(parameter.reshape(()), shape)
    axis = quant.axis % len(shape)
    if quant.block_size:
        expanded = np.repeat(parameter, quant.block_size, axis=axis)
        return np.take(expanded, np.arange(shape[axis]), axis=axis)
    view = [1] * len(shape)
    view[axis] = shape[axis]
    return np.broadcast_to(parameter.reshape(view), shape)


def zero_points(quant: Quantized, shape: tuple[int, ...], zero_point, dtype) -> np.ndarray:
    """The integer that dequantizes to 0 at every position of a weight of `shape`."""
    if zero_point is None:
        return np.zeros(shape, dtype=dtype)
    return _broadcast(zero_point, quant, shape).astype(dtype)


def dequantize(value: np.ndarray, quant: Quantized, scale, zero_point) -> np.ndarray:
    """(q - zero_point) * scale in float64; `scale` None means 1 (ConvInteger's weight)."""
    if quant.bits < 8:
        return _dequantize_packed(value, quant, scale, zero_point)
    real = value.astype(np.float64)
    if zero_point is not None:
        real -= _broadcast(zero_point, quant, value.shape)
    if scale is not None:
        real *= _broadcast(scale, quant, value.shape)
    return real


def _dequantize_packed(value: np.ndarray, quant: Quantized, scale, zero_point) -> np.ndarray:
    """MatMulNBits' B [N, blocks, bytes] with scales [N, blocks] or [N * blocks] and zero
    points packed along the blocks (uint8), unpacked (same type as the scales), or absent
    (2^(bits-1))."""
    rows, blocks = value.shape[0], value.shape[1]
    q = unpack(value, quant.bits).astype(np.float64)  # [N, blocks, block_size (padded)]
    if zero_point is None:
        zero = np.full((rows, blocks), 2.0 ** (quant.bits - 1))
    elif np.asarray(zero_point).dtype == np.uint8:
        flat = unpack(np.asarray(zero_point).reshape(-1), quant.bits)
        per_row = -(-blocks * quant.bits // 8) * (8 // quant.bits)
        if np.asarray(zero_point).ndim == 2:
            zero = flat.reshape(rows, per_row)[:, :blocks].astype(np.float64)
        else:
            zero = flat[: rows * blocks].reshape(rows, blocks).astype(np.float64)
    else:
        zero = np.asarray(zero_point, dtype=np.float64).reshape(rows, blocks)
    scales = np.asarray(scale, dtype=np.float64).reshape(rows, blocks)
    return (q - zero[..., None]) * scales[..., None]


def dequantize_linear(view, node) -> Quantized | None:
    """DequantizeLinear's quantization of its input x (onnx opset 10-23: per tensor, per
    `axis` (default 1), or per block of `block_size` along it), None when x, its scale or
    its zero point is not a constant, or x is packed below a byte (int4, uint4)."""
    x_shape = view.constant_shape(node.input[0])
    scale_shape = view.constant_shape(node.input[1]) if len(node.input) > 1 else None
    has_zero = len(node.input) > 2 and bool(node.input[2])
    if x_shape is None or scale_shape is None or (has_zero and not view.is_constant(node.input[2])):
        return None
    if view.constant_type(node.input[0]) not in _BYTE_TYPES:
        return None
    zero = 2 if has_zero else None
    if int(np.prod(scale_shape)) == 1 and len(scale_shape) <= 1:
        return Quantized(scale=1, zero_point=zero)
    axis = int(view.attribute(node, "axis", 1)) % max(len(x_shape), 1)
    return Quantized(1, zero, axis, int(view.attribute(node, "block_size", 0) or 0))


# 8-, 16- and 32-bit integers (an int32 bias is quantized too); 4-bit types are packed.
_BYTE_TYPES = frozenset(
    {TensorProto.UINT8, TensorProto.INT8, TensorProto.UINT16, TensorProto.INT16,
     TensorProto.INT32, TensorProto.UINT32}
)  # fmt: skip
