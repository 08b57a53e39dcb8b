"""Gemm and MatMul with a constant weight: the fully connected layers of every exporter.

Spec: Gemm computes alpha * A' B' + beta * C with A' = A or A^T (transA), B' = B or B^T
(transB), C broadcast to (M, N). MatMul follows numpy.matmul: the last axis of A meets the
first axis of a 2-D B. The dynamo exporter writes Linear as MatMul with a pre-transposed
weight (K, N); the classic one as Gemm with transB=1.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..channels import Layout
from . import rule

if TYPE_CHECKING:
    from ..analysis import Context


@rule("Gemm")
def gemm(ctx: Context) -> None:
    """Input features are absorbed by B's K axis; output features are new and cut B's N
    axis and C's last axis (when C is per-feature)."""
    weight_shape = ctx.constant_shape(1)
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
        ctx.slice(1, k_axis, a.atoms, role="weight", absorbs=True)
    out = ctx.new_atoms(weight_shape[n_axis])
    ctx.slice(1, n_axis, out, role="weight")
    bias_shape = ctx.input_shape(2)
    if bias_shape and bias_shape[-1] == weight_shape[n_axis] and weight_shape[n_axis] != 1:
        if ctx.constant(2) is None:
            ctx.block("bias computed at runtime")
            return
        ctx.slice(2, len(bias_shape) - 1, out, role="bias")
    ctx.emit(0, Layout(1, out))


@rule("MatMul")
def matmul(ctx: Context) -> None:
    """With a constant 2-D B (K, N): A's last axis is absorbed by B's rows, and the output's
    last axis holds N new features. Any other MatMul multiplies two activations, whose
    channels no single weight slice can remove."""
    weight_shape = ctx.constant_shape(1)
    a = ctx.layout(0)
    a_rank = len(ctx.input_shape(0) or ())
    a_is_constant = ctx.constant_shape(0) is not None
    if weight_shape is None or len(weight_shape) != 2 or a_is_constant or a_rank < 2:
        ctx.block("multiplies computed tensors")
        return
    if any(i != 0 for i, _ in ctx.tracked()) or (a is not None and a.axis != a_rank - 1):
        ctx.block("channels are not on the contracted axis")
        return
    if a is not None:
        ctx.slice(1, 0, a.atoms, role="weight", absorbs=True)
    out = ctx.new_atoms(weight_shape[1])
    ctx.slice(1, 1, out, role="weight")
    ctx.emit(0, Layout(a_rank - 1, out))
