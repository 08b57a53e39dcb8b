"""Gemm and MatMul with a constant weight: the fully connected layers of every exporter.

Spec: Gemm computes alpha * A' B' + beta * C with A' = A or A^T (transA), B' = B or B^T
(transB), C broadcast to (M, N). MatMul follows numpy.matmul: the last axis of A meets the
first axis of a 2-D B. The dynamo exporter writes Linear as MatMul with a pre-transposed
weight (K, N); the classic one as Gemm with transB=1.
"""

from __future__ import annotations

import numpy as np

from ..channels import Layout
from .context import Context
from .moe import gathered_expert_weights
from .registry import rule


@rule("Gemm")
def gemm(ctx: Context) -> None:
    gemm_channels(ctx)


def gemm_channels(ctx: Context, weight: int = 1, bias: int = 2) -> None:
    """Input features are absorbed by B's K axis; output features are new and cut B's N
    axis and C's last axis (when C is per-feature). `weight` and `bias` are the input
    indices of B and C (QGemm has its own)."""
    weight_shape = ctx.constant_shape(weight)
    a = ctx.layout(0)
    if weight_shape is None or any(i != 0 for i, _ in ctx.tracked()):
        ctx.block("B is computed at runtime" if weight_shape is None else "channels in B or C")
        return
    feature_axis = 0 if ctx.attr("transA", 0) else 1
    if a is not None and a.axis != feature_axis:
        ctx.block("channels on the batch axis")
        return
    k_axis, n_axis = (1, 0) if ctx.attr("transB", 0) else (0, 1)
    if a is not None:
        ctx.slice(weight, k_axis, a.atoms, role="weight", absorbs=True)
    out = ctx.new_atoms(weight_shape[n_axis])
    ctx.slice(weight, n_axis, out, role="weight")
    bias_shape = ctx.input_shape(bias)
    if bias_shape and bias_shape[-1] == weight_shape[n_axis] and weight_shape[n_axis] != 1:
        if ctx.constant_shape(bias) is None:
            ctx.block("bias computed at runtime")
            return
        ctx.slice(bias, len(bias_shape) - 1, out, role="bias")
    ctx.emit(0, Layout(1, out))


@rule("MatMul", tiled=True)
def matmul(ctx: Context) -> None:
    matmul_channels(ctx)


def matmul_channels(ctx: Context, weight: int = 1) -> np.ndarray | None:
    """With a constant 2-D B (K, N): A's last axis is absorbed by B's rows, and the output's
    last axis holds N new features. Two computed operands (attention) go to
    `activation_matmul`. `weight`: B's input index (QLinearMatMul has its own). Returns
    the new output features, None when there are none."""
    weight_shape = ctx.constant_shape(weight)
    a = ctx.layout(0)
    a_rank = len(ctx.input_shape(0) or ())
    a_is_constant = ctx.constant_shape(0) is not None
    if weight_shape is None and not a_is_constant:
        if weight != 1:
            ctx.block("both operands are computed")
            return
        if not gathered_expert_weights(ctx):
            activation_matmul(ctx)
        return
    if a is not None and a.tiled:
        ctx.block("channels share an axis with a symbolic dim (e.g. batch*heads)")
        return
    if weight_shape is None or len(weight_shape) != 2 or a_is_constant or a_rank < 2:
        ctx.block("multiplies by a constant that is not a 2-D weight")
        return
    if any(i != 0 for i, _ in ctx.tracked()) or (a is not None and a.axis != a_rank - 1):
        ctx.block("channels are not on the contracted axis")
        return
    if a is not None:
        ctx.slice(weight, 0, a.atoms, role="weight", absorbs=True)
    out = ctx.new_atoms(weight_shape[1])
    ctx.slice(weight, 1, out, role="weight")
    ctx.emit(0, Layout(a_rank - 1, out))
    return out


def activation_matmul(ctx: Context, transposed: tuple[bool, bool] = (False, False)) -> None:
    """A (..., M, K) @ B (..., K, N), both computed (attention scores Q.K^T and P.V).

    Batch axes broadcast like elementwise ops: channels on the same batch axis of both
    operands (heads) are coupled and stay on the output's. Channels on M (A's rows) or N
    (B's columns) pass to the output's rows or columns. Channels on K in both operands are
    coupled and summed away: removing index k from both drops exactly the k-th term, which
    the masking oracle reproduces by zeroing A's k-th column. `transposed[i]`: operand i
    enters with its last two axes swapped (FusedMatMul's transA, transB)."""
    tracked = dict(ctx.tracked())
    shapes = [ctx.input_shape(0), ctx.input_shape(1)]
    out_shape = ctx.output_shape()
    if not tracked:
        return
    if None in shapes or out_shape is None or min(len(shapes[0]), len(shapes[1])) < 2:
        ctx.block("operand shapes unknown")
        return
    rank = len(out_shape)
    role = {}  # input index -> (kind, output axis or None)
    for index, layout in tracked.items():
        in_rank = len(shapes[index])
        axis = layout.axis
        if transposed[index] and axis >= in_rank - 2:
            axis = 2 * in_rank - 3 - axis  # the last two axes swap
        if axis < in_rank - 2:
            role[index] = ("batch", axis + rank - in_rank)
        elif (index, axis - in_rank) in ((0, -2), (1, -1)):
            role[index] = ("rows" if index == 0 else "columns", rank + axis - in_rank)
        else:
            role[index] = ("contracted", None)
    kinds = {kind for kind, _ in role.values()}
    if len(tracked) == 2 and len({r for r in role.values()}) != 1:
        ctx.block("operands carry channels on different axes")
        return
    kind, out_axis = next(iter(role.values()))
    first = next(iter(tracked.values()))
    if any(layout.tiled for layout in tracked.values()) and (
        kind != "batch" or len(tracked) != 2 or not all(x.tiled for x in tracked.values())
    ):  # a tiled axis repeats its channels: only batch axes of both operands may hold it
        ctx.block("channels share an axis with a symbolic dim (e.g. batch*heads)")
        return
    if len(tracked) == 2:
        ctx.couple(tracked[0].atoms, tracked[1].atoms)
    elif kind in ("batch", "contracted"):
        other = 1 - next(iter(tracked))
        other_axis = (out_axis - rank + len(shapes[other])) if kind == "batch" else None
        if kind == "contracted" or (other_axis >= 0 and shapes[other][other_axis] != 1):
            ctx.block("the other operand carries these positions untracked")
            return
    if kinds == {"contracted"}:
        ctx.mask_input(0, len(shapes[0]) - 1 - transposed[0], tracked[0].atoms)
        return
    ctx.emit(0, Layout(out_axis, first.atoms, first.tiled))


@rule("FusedMatMul", domain="com.microsoft", tiled=True)
def fused_matmul(ctx: Context) -> None:
    """com.microsoft.FusedMatMul: alpha * A' @ B' like numpy.matmul, A' = A or A with its
    last two axes swapped (transA), likewise B' (transB); transBatchA/B also move batch
    axes. alpha scales every output alike. A constant 2-D B is a linear layer (B' = B^T
    when transB: K on axis 1); two computed operands are mapped as MatMul's, with the
    swapped axes of a transposed one (onnxruntime fuses Q @ K^T into transB=1)."""
    if ctx.attr("transBatchA", 0) or ctx.attr("transBatchB", 0):
        ctx.block("batch axes transposed (transBatchA/B)")
        return
    weight_shape = ctx.constant_shape(1)
    trans_a, trans_b = bool(ctx.attr("transA", 0)), bool(ctx.attr("transB", 0))
    if weight_shape is None and ctx.constant_shape(0) is None:
        activation_matmul(ctx, (trans_a, trans_b))
        return
    a, a_rank = ctx.layout(0), len(ctx.input_shape(0) or ())
    if a is not None and a.tiled:
        ctx.block("channels share an axis with a symbolic dim (e.g. batch*heads)")
        return
    if weight_shape is None or len(weight_shape) != 2 or a_rank < 2:
        ctx.block("multiplies by a constant that is not a 2-D weight")
        return
    contracted = a_rank - (2 if trans_a else 1)
    if any(i != 0 for i, _ in ctx.tracked()) or (a is not None and a.axis != contracted):
        ctx.block("channels are not on the contracted axis")
        return
    k_axis, n_axis = (1, 0) if trans_b else (0, 1)
    if a is not None:
        ctx.slice(1, k_axis, a.atoms, role="weight", absorbs=True)
    out = ctx.new_atoms(weight_shape[n_axis])
    ctx.slice(1, n_axis, out, role="weight")
    ctx.emit(0, Layout(a_rank - 1, out))
