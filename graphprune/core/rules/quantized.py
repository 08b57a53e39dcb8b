"""Quantized graphs as onnxruntime's quantizer writes them: QDQ, QOperator, dynamic
quantization and 4-bit weight-only MatMulNBits.

A weight that a DequantizeLinear of constants computes (QDQ) is read through it by every
rule (`Context.constant_shape`, `Context.slice`): Conv's or MatMul's slices cut the
quantized initializer and, along its quantization axis, the per-channel scale and zero
point; a per-tensor scale stays. The QOperator ops declare their quantized weight
(`Context.quantized`) and then map channels as their float op does. Activations are
quantized per tensor with calibrated scales, so removing channels leaves the others'
integers unchanged and the pruned model equals the masked original exactly.

Dynamic quantization (DynamicQuantizeLinear, onnxruntime's `quantize_dynamic`) computes
its scale and zero point from the range of the whole tensor, [min(0, min x), max(0, max
x)], so removing channels that held an end of the range requantizes the kept ones on a
narrower (finer) grid: a barrier unless `--approximate-dynamic-quant` is given, and then
an approximation. The range always holds 0, so a removed channel zeroed at the quantizer's
input leaves exactly the kept channels' range: that is the oracle (`mask_input`), and the
pruned model equals it exactly.

Specs: onnx QuantizeLinear / DequantizeLinear (opset 10-23), QLinearConv, QLinearMatMul,
ConvInteger, MatMulInteger, DynamicQuantizeLinear; onnxruntime's contrib ops
(docs/ContribOperators.md): QGemm, QLinearAdd, QLinearMul, QLinearConcat, QLinearSigmoid,
QLinearLeakyRelu, QLinearGlobalAveragePool, QLinearAveragePool, DynamicQuantizeMatMul,
MatMulIntegerToFloat, MatMulNBits.
"""

from __future__ import annotations

import numpy as np

from ..channels import Layout, Quantized
from .context import Context
from .conv import conv_channels
from .elementwise import broadcast
from .linear import gemm_channels, matmul_channels
from .registry import rule

MS = "com.microsoft"


@rule("QuantizeLinear", "DequantizeLinear")
@rule("QuantizeLinear", "DequantizeLinear", domain=MS)
def quantize_linear(ctx: Context) -> None:
    """y = saturate(x / scale + zero_point) or (x - zero_point) * scale, elementwise. A
    per-tensor scale needs nothing; a per-axis one along the channel axis is sliced with
    the channels; blocks of `block_size` along the channel axis go whole."""
    x = ctx.data_layout()
    if x is None:
        return
    scale_shape = ctx.input_shape(1)
    if scale_shape is None or int(np.prod(scale_shape)) != 1 or len(scale_shape) > 1:
        rank = len(ctx.input_shape(0))
        axis, block = int(ctx.attr("axis", 1)) % rank, int(ctx.attr("block_size", 0) or 0)
        parameters = [i for i in (1, 2) if ctx.view.input(ctx.node, i) is not None]
        if any(ctx.constant_shape(i) is None for i in parameters):
            ctx.block("per-axis scale or zero point computed at runtime")
            return
        atoms, along = x.atoms, x.axis
        if block and axis == x.axis:
            ctx.couple(np.repeat(x.atoms[::block], block)[: x.size], x.atoms)
            atoms = x.atoms[::block]
        elif not block:
            along = 0 if axis == x.axis else None
        for index in parameters if along is not None else ():
            ctx.slice(index, along, atoms)
    ctx.emit(0, x)


@rule("QLinearConv")
def qlinear_conv(ctx: Context) -> None:
    """Conv on x (0) with w (3), w_scale (4) and w_zero_point (5) per tensor or per output
    channel, int32 bias (8); x's and y's scales are per tensor."""
    ctx.quantized(3, Quantized(scale=4, zero_point=5, axis=0))
    conv_channels(ctx, weight=3, bias=8)


@rule("ConvInteger")
def conv_integer(ctx: Context) -> None:
    """Conv of x (0) and w (1) as integers minus their zero points (2, 3); w's zero point
    is per tensor or per output channel. No bias, no scale (applied after, in float)."""
    ctx.quantized(1, Quantized(scale=None, zero_point=3, axis=0))
    conv_channels(ctx, weight=1, bias=None)


@rule("QLinearMatMul")
def qlinear_matmul(ctx: Context) -> None:
    """MatMul of a (0) and b (3) [K, N]; b_scale (4) and b_zero_point (5) per tensor or
    per column N."""
    ctx.quantized(3, Quantized(scale=4, zero_point=5, axis=1))
    matmul_channels(ctx, weight=3)


@rule("MatMulInteger")
def matmul_integer(ctx: Context) -> None:
    """MatMul of A (0) and B (1) [K, N] minus zero points; b_zero_point (3) per tensor or
    per column. a_zero_point (2) is per tensor or per row of A, never per feature."""
    ctx.quantized(1, Quantized(scale=None, zero_point=3, axis=1))
    matmul_channels(ctx, weight=1)


@rule("QGemm", domain=MS)
def qgemm(ctx: Context) -> None:
    """Gemm of A (0) and B (3) with int32 C (6); b_scale (4) and b_zero_point (5) per
    tensor or per output feature N (B's axis 0 with transB)."""
    n_axis = 0 if ctx.attr("transB", 0) else 1
    ctx.quantized(3, Quantized(scale=4, zero_point=5, axis=n_axis))
    gemm_channels(ctx, weight=3, bias=6)


@rule("MatMulIntegerToFloat", domain=MS)
def matmul_integer_to_float(ctx: Context) -> None:
    """MatMulInteger of A (0) and B (1) times a_scale (2) and b_scale (3), minus zero points
    (4, 5), plus bias (6) [N]; b's scale and zero point per tensor or per column."""
    ctx.quantized(1, Quantized(scale=3, zero_point=5, axis=1))
    _with_bias(ctx, matmul_channels(ctx, weight=1), 6)


@rule("DynamicQuantizeMatMul", domain=MS)
def dynamic_quantize_matmul(ctx: Context) -> None:
    """Float A (0) quantized with its own range, times B (1) with b_scale (2) and
    b_zero_point (3) per tensor or per column, plus bias (4) [N]. Removing A's features
    changes that range (see `dynamic_quantize_linear`)."""
    if ctx.layout(0) is not None and not _dynamic_range(ctx):
        return
    ctx.quantized(1, Quantized(scale=2, zero_point=3, axis=1))
    _with_bias(ctx, matmul_channels(ctx, weight=1), 4)


def _with_bias(ctx: Context, out: np.ndarray | None, index: int) -> None:
    if out is not None and ctx.view.input(ctx.node, index) is not None:
        if ctx.constant_shape(index) is None:
            ctx.block("bias computed at runtime")
            return
        ctx.slice(index, 0, out, role="bias")


@rule("DynamicQuantizeLinear")
def dynamic_quantize_linear(ctx: Context) -> None:
    """y = saturate(x / scale + zero_point) with scale and zero point from the range of the
    whole tensor (outputs 1 and 2): channels pass to y, but removing some changes the range
    and with it every other channel's integers."""
    x = ctx.data_layout()
    if x is not None and _dynamic_range(ctx):
        ctx.emit(0, x)


DYNAMIC_QUANT_OPTION = "--approximate-dynamic-quant"


def _dynamic_range(ctx: Context) -> bool:
    """Channels of input 0 may go through a quantization whose range they are part of only
    as an opted-in approximation: the kept channels are then quantized with the range of
    the kept ones, exactly as if the removed ones were zero at the input (the oracle)."""
    x = ctx.layout(0)
    if not ctx.approximate_dynamic_quant:
        reason = "quantizes with the range of all channels (removing some changes it)"
        ctx.block(reason, option=DYNAMIC_QUANT_OPTION)
        return False
    ctx.mask_input(0, x.axis, x.atoms)
    ctx.approximate(x.atoms, "quantizes with the range of the kept channels only")
    return True


# Inputs 1, 2, 4, 5, 6, 7 are per-tensor scales and zero points (scalars): the broadcast
# rule skips them and couples or slices the data operands A (0) and B (3).
rule("QLinearAdd", "QLinearMul", domain=MS)(broadcast)


@rule("QLinearConcat", domain=MS)
def qlinear_concat(ctx: Context) -> None:
    """Concat of the tensors X at inputs 2, 5, 8, ... (each followed by its per-tensor scale
    and zero point; Y's come first). Along the channel axis the output holds the inputs'
    channels end to end (untracked inputs add positions nothing may remove); along another
    axis every input must carry the same channels, which couples them."""
    tracked = dict(ctx.tracked())
    if not tracked:
        return
    data = list(range(2, len(ctx.node.input), 3))
    if any(index not in data for index in tracked):
        ctx.block("channels reach a scale or zero point")
        return
    rank = len(ctx.output_shape() or ctx.input_shape(data[0]) or ())
    axis = int(ctx.attr("axis")) % max(rank, 1)
    if all(layout.axis == axis for layout in tracked.values()):
        pieces = []
        for index in data:
            shape = ctx.input_shape(index)
            if index in tracked:
                pieces.append(tracked[index].atoms)
            elif shape is None or not isinstance(shape[axis], int):
                ctx.block("size of an untracked input along the channel axis unknown")
                return
            else:
                pieces.append(ctx.opaque_atoms(shape[axis], "concatenated with untracked input"))
        ctx.emit(0, Layout(axis, np.concatenate(pieces)))
        return
    first = next(iter(tracked.values()))
    if len(tracked) != len(data) or any(
        x.axis != first.axis or x.size != first.size for x in tracked.values()
    ):
        ctx.block("inputs carry channels on different axes")
        return
    for layout in tracked.values():
        ctx.couple(first.atoms, layout.atoms)
    ctx.emit(0, first)


@rule("QLinearSigmoid", "QLinearLeakyRelu", domain=MS)
def qlinear_unary(ctx: Context) -> None:
    """Elementwise on X (0); its scales and zero points are per tensor."""
    x = ctx.data_layout()
    if x is not None:
        ctx.emit(0, x)


@rule("QLinearGlobalAveragePool", "QLinearAveragePool", domain=MS)
def qlinear_pool(ctx: Context) -> None:
    """Per-channel spatial pooling of X (0); channels on axis 1, or last with
    channels_last=1."""
    x = ctx.data_layout()
    if x is None:
        return
    rank = len(ctx.input_shape(0))
    if x.axis != (rank - 1 if ctx.attr("channels_last", 0) else 1):
        ctx.block("pools over the channel axis")
        return
    ctx.emit(0, x)


@rule("MatMulNBits", domain=MS)
def matmul_nbits(ctx: Context) -> None:
    """A [..., K] times B^T, B block-quantized along K: B [N, K/block, block*bits/8] (codes
    packed low bits first), scales [N, K/block] or [N * K/block], zero points packed like
    B along the blocks ([N, ceil(K/block*bits/8)] or flat), or unpacked in the scales'
    type, optional bias [N]. Output features N cut B's, the scales', the zero points' and
    the bias' rows and set N. Input features go only in whole blocks (they share a scale):
    B loses blocks, the scales and zero points lose entries, K shrinks."""
    bits, size = int(ctx.attr("bits", 4)), int(ctx.attr("block_size"))
    n, k = int(ctx.attr("N")), int(ctx.attr("K"))
    b_shape, a = ctx.constant_shape(1), ctx.data_layout()
    blocks = -(-k // size)
    if bits not in (2, 4) or b_shape != (n, blocks, size * bits // 8):
        ctx.block(f"B {b_shape} is not {bits}-bit codes of [{n}, {blocks}] blocks of {size}")
        return
    if any(ctx.constant_shape(i) is None for i in (2, 3, 5) if ctx.view.input(ctx.node, i)):
        ctx.block("scales, zero points or bias computed at runtime")
        return
    rank = len(ctx.input_shape(0))
    flat = len(ctx.constant_shape(2)) == 1
    zero = ctx.view.input(ctx.node, 3)
    packed = zero is not None and ctx.view.constant_type(zero) == 2  # uint8 codes
    pack = 8 // bits if packed else 1
    quant = Quantized(scale=2, zero_point=3 if zero else None, axis=1, block_size=size, bits=bits)
    ctx.quantized(1, quant)
    if a is not None:
        if a.axis != rank - 1 or ctx.view.input(ctx.node, 4) is not None or flat:
            ctx.block("features off the last axis, reordered by g_idx, or flat scales")
            return
        ctx.couple(np.repeat(a.atoms[::size], size)[:k], a.atoms)
        first = a.atoms[::size]  # one atom per block, the block's class
        ctx.slice(1, 1, first, role="weight")
        ctx.slice(2, 1, first, absorbs=True)  # a zero scale dequantizes its block to 0
        if zero is not None:
            ctx.slice(3, 1, first, pack=pack)
        ctx.set_count(ctx.target(attribute="K"), a.atoms)
    out = ctx.new_atoms(n)
    ctx.slice(1, 0, out, role="weight")
    per_block = np.repeat(out, blocks)
    ctx.slice(2, 0, per_block if flat else out)
    if zero is not None:
        flat_zero = len(ctx.constant_shape(3)) == 1
        ctx.slice(3, 0, per_block if flat_zero else out, pack=pack if flat_zero else 1)
    if ctx.view.input(ctx.node, 5) is not None:
        ctx.slice(5, 0, out, role="bias")
    ctx.set_count(ctx.target(attribute="N"), out)
    ctx.emit(0, Layout(rank - 1, out))
