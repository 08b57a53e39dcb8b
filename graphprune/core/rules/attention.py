"""onnxruntime's fused attention (com.microsoft.Attention and MultiHeadAttention), as its
transformer optimizer and Optimum write it for BERT-like models.

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


@rule("MultiHeadAttention", domain="com.microsoft")
def multi_head_attention(ctx: Context) -> None:
    """com.microsoft.MultiHeadAttention with separate query, key and value [B, S, H*D] (as
    Optimum and onnxruntime's optimizer write it after the projections): position h*D + d
    of each is head h, so a head's D positions go together and head h of Q, K and V goes
    together; the output holds V's heads. A packed bias (input 3, Q, K and V side by side)
    is sliced with them; the key padding mask (input 4) is per token. Other inputs (an
    attention bias per head, a KV cache) are not mapped yet."""
    heads = int(ctx.attr("num_heads", 0))
    tracked = dict(ctx.tracked())
    q, k, v = (tracked.get(index) for index in range(3))
    shapes = [ctx.input_shape(index) for index in range(3)]
    if heads < 1 or None in (q, k, v) or any(index > 2 for index in tracked):
        ctx.block("query, key and value must all carry the channels (packed QKV is not mapped)")
        return
    if any(
        len(shape or ()) != 3 or layout.axis != 2
        for shape, layout in zip(shapes, (q, k, v), strict=True)
    ):
        ctx.block("query, key or value is not [batch, sequence, heads * head size]")
        return
    if any(ctx.node.input[5:]) or any(ctx.node.output[1:]) or q.size % heads or v.size % heads:
        ctx.block("an attention bias or KV cache is not mapped yet")
        return
    per_head = [layout.atoms.reshape(heads, -1) for layout in (q, k, v)]
    if per_head[0].shape != per_head[1].shape:
        ctx.block("query and key heads differ in size")
        return
    for atoms in per_head:
        for head in atoms:
            ctx.couple_all(head)
    ctx.couple(per_head[0][:, 0], per_head[1][:, 0])
    ctx.couple(per_head[0][:, 0], per_head[2][:, 0])
    if len(ctx.node.input) > 3 and ctx.node.input[3]:
        if ctx.constant(3) is None:
            ctx.block("bias computed at runtime")
            return
        ctx.slice(3, 0, np.concatenate([q.atoms, k.atoms, v.atoms]), role="bias")
    ctx.set_count(ctx.target(attribute="num_heads"), per_head[0][:, 0])
    ctx.mark_heads(per_head[0][:, 0])
    ctx.emit(0, Layout(2, v.atoms))
