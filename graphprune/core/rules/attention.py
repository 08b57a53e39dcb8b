"""onnxruntime's fused attention (com.microsoft.Attention), as its transformer optimizer
and Optimum write it for BERT-like models.

Spec: input [B, S, D_in] @ weights [D_in, Q + K + V] + bias, split into Q, K, V of
`qkv_hidden_sizes` (default three equal parts), each `num_heads` heads of equal width;
head h attends with its own columns of each part; the output [B, S, V] is the heads'
results side by side. Heads are independent, so removing one removes its columns of Q, K
and V (weights and bias) and its block of the output, and `num_heads` (and
`qkv_hidden_sizes`) count the heads that stay.
"""

from __future__ import annotations

import numpy as np

from ..channels import Layout
from .context import Context
from .registry import rule

_WEIGHTS, _BIAS = 1, 2


@rule("Attention", domain="com.microsoft")
def fused_attention(ctx: Context) -> None:
    x = ctx.layout(0)
    if any(index != 0 for index, _ in ctx.tracked()):
        ctx.block("channels reach the weights, mask or cache inputs")
        return
    weights = ctx.constant_shape(_WEIGHTS)
    heads = int(ctx.attr("num_heads", 0))
    sizes = list(ctx.attr("qkv_hidden_sizes", []) or [])
    if weights is None or len(weights) != 2 or heads < 1:
        ctx.block("weights computed at runtime" if weights is None else "weights not 2-D")
        return
    sizes = sizes or [weights[1] // 3] * 3
    if sum(sizes) != weights[1] or any(size % heads for size in sizes):
        ctx.block("qkv sizes do not split into equal heads")
        return
    if any(ctx.node.input[4:]) or any(ctx.node.output[1:]):
        # The mask (input 3) is per token, the same for every head; a KV cache or a
        # per-head attention bias would need its own slicing.
        ctx.block("a KV cache or attention bias is not mapped yet")
        return
    if x is not None:
        ctx.slice(_WEIGHTS, 0, x.atoms, role="weight", absorbs=True)
    head_atoms = ctx.new_atoms(heads)
    columns = np.concatenate([np.repeat(head_atoms, size // heads) for size in sizes])
    ctx.slice(_WEIGHTS, 1, columns, role="weight")
    if ctx.view.input(ctx.node, _BIAS) is not None:
        if ctx.constant(_BIAS) is None:
            ctx.block("bias computed at runtime")
            return
        ctx.slice(_BIAS, 0, columns, role="bias")
    ctx.set_count(ctx.target(attribute="num_heads"), head_atoms)
    if ctx.attr("qkv_hidden_sizes") is not None:
        for entry, size in enumerate(sizes):
            per_head = np.repeat(head_atoms, size // heads)
            ctx.set_count(ctx.target(attribute="qkv_hidden_sizes", entry=entry), per_head)
    ctx.mark_heads(head_atoms)
    rank = len(ctx.output_shape() or (0, 0, 0))
    ctx.emit(0, Layout(rank - 1, np.repeat(head_atoms, sizes[2] // heads)))
