"""onnxruntime's fused attention, as its transformer optimizer, Optimum and
onnxruntime-genai's model builder (Olive's LLM path) write it: com.microsoft Attention,
PackedAttention, MultiHeadAttention, PackedMultiHeadAttention, GroupQueryAttention and
RotaryEmbedding (and onnx's RotaryEmbedding, opset 23). Specs: onnxruntime's
docs/ContribOperators.md and the onnx operator docs. Every head is removed whole: its
positions are coupled, and the attributes that count heads are rewritten.

Attention: input [B, S, D_in] @ weights [D_in, Q + K + V] + bias, split into Q, K, V of
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
    """The mask (input 3) is per token, the same for every head; a KV cache (input 4) or
    a per-head attention bias (5) would need its own slicing."""
    _attention(ctx, first_unmapped=4)


@rule("PackedAttention", domain="com.microsoft")
def packed_attention(ctx: Context) -> None:
    """com.microsoft.PackedAttention: Attention on the real tokens only, input [T, D_in],
    output [T, V]; token_offset and cumulative_sequence_length (inputs 3, 4) are per
    token. A per-head attention bias (input 5) is not mapped yet."""
    _attention(ctx, first_unmapped=5)


def _attention(ctx: Context, *, first_unmapped: int) -> None:
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
    if any(ctx.node.input[first_unmapped:]) or any(ctx.node.output[1:]):
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
    is sliced with them; the key padding mask (input 4) is per token. Packed QKV
    ([B, S, H, 3, D], key and value absent) and packed KV ([B, S, H, 2, D] as key, value
    absent) carry the heads on axis 2. Other inputs (an attention bias per head, a KV
    cache) are not mapped yet."""
    _separate_heads(ctx, rank=3, first_unmapped=5)


@rule("PackedMultiHeadAttention", domain="com.microsoft")
def packed_multi_head_attention(ctx: Context) -> None:
    """com.microsoft.PackedMultiHeadAttention: MultiHeadAttention on the real tokens only,
    query, key and value [T, H*D] (or packed QKV [T, H, 3, D]); token_offset and
    cumulative_sequence_length (inputs 4, 5) are per token. The attention bias (input 6)
    is not mapped yet."""
    _separate_heads(ctx, rank=2, first_unmapped=6)


def _separate_heads(ctx: Context, *, rank: int, first_unmapped: int) -> None:
    heads = int(ctx.attr("num_heads", 0))
    tracked = dict(ctx.tracked())
    if heads < 1 or any(index > 2 for index in tracked):
        ctx.block("channels reach the bias, mask or cache inputs")
        return
    if any(ctx.node.input[first_unmapped:]) or any(ctx.node.output[1:]):
        ctx.block("an attention bias or KV cache is not mapped yet")
        return
    present = [index for index in range(3) if ctx.view.input(ctx.node, index) is not None]
    if any(tracked.get(index) is None for index in present):
        ctx.block("query, key and value must all carry the channels")
        return
    head_atoms = _packed_heads(ctx, tracked, present, rank, heads)
    if isinstance(head_atoms, str):
        ctx.block(head_atoms)
        return
    if head_atoms is None:
        layouts = [tracked[index] for index in range(3)]
        if any(len(ctx.input_shape(i)) != rank or x.axis != rank - 1 for i, x in tracked.items()):
            ctx.block("query, key or value is not [..., heads * head size]")
            return
        if any(x.size % heads for x in layouts) or layouts[0].size != layouts[1].size:
            ctx.block("query and key do not split into heads of one size")
            return
        per_head = [layout.atoms.reshape(heads, -1) for layout in layouts]
        for atoms in per_head:
            for head in atoms:
                ctx.couple_all(head)
        head_atoms = per_head[0][:, 0]
        ctx.couple(head_atoms, per_head[1][:, 0])
        ctx.couple(head_atoms, per_head[2][:, 0])
        if len(ctx.node.input) > 3 and ctx.node.input[3]:
            if ctx.constant(3) is None:
                ctx.block("bias computed at runtime")
                return
            ctx.slice(3, 0, np.concatenate([x.atoms for x in layouts]), role="bias")
        out = layouts[2].atoms
    else:
        if len(ctx.node.input) > 3 and ctx.node.input[3]:
            ctx.block("a bias with packed QKV is not mapped yet")
            return
        value = ctx.input_shape(2 if 2 in present else present[-1])
        out = np.repeat(head_atoms, value[-1])
    ctx.set_count(ctx.target(attribute="num_heads"), head_atoms)
    ctx.mark_heads(head_atoms)
    ctx.emit(0, Layout(rank - 1, out))


def _packed_heads(ctx, tracked, present, rank, heads) -> np.ndarray | str | None:
    """Heads of packed QKV (query [..., H, 3, D], key and value absent) or packed KV (query
    [..., H*D] with key [..., H, 2, D], value absent): the heads are on the axis before the
    3 (or 2), and the query's heads are coupled with them. None when nothing is packed; a
    reason when the packing is not one of these."""
    packed = [i for i in present if len(ctx.input_shape(i)) == rank + 2]
    if not packed:
        return None
    index = packed[0]
    layout, shape = tracked[index], ctx.input_shape(index)
    if present != ([0] if index == 0 else [0, 1]) or layout.axis != rank - 1:
        return "packed QKV or KV without its heads on the head axis"
    if shape[rank - 1] != heads or shape[rank] != (3 if index == 0 else 2):
        return "packed QKV or KV does not hold num_heads heads"
    if index == 1:
        query = tracked[0]
        if query.axis != rank - 1 or query.size % heads:
            return "query is not [..., heads * head size]"
        per_head = query.atoms.reshape(heads, -1)
        for head in per_head:
            ctx.couple_all(head)
        ctx.couple(per_head[:, 0], layout.atoms)
    return layout.atoms


# GroupQueryAttention inputs (onnxruntime ContribOperators: com.microsoft.GroupQueryAttention).
_PAST_KEY, _PAST_VALUE, _ATTENTION_BIAS, _HEAD_SINK, _K_SCALE, _V_SCALE = 3, 4, 10, 11, 12, 13


@rule("GroupQueryAttention", domain="com.microsoft")
def group_query_attention(ctx: Context) -> None:
    """com.microsoft.GroupQueryAttention: query [B, S, num_heads * D] and key, value
    [B, S, kv_num_heads * D], or one packed input [B, S, (num_heads + 2 * kv_num_heads) * D]
    (Q, K, V side by side, key and value absent). Query head h attends with KV head
    h // (num_heads / kv_num_heads), so one group is a KV head with its query heads (as
    in the raw graphs' repeat_kv); the output holds the query heads. num_heads and
    kv_num_heads count the heads that stay. The KV cache ([B, kv_num_heads, T, D]) loses
    the removed KV heads on axis 1: a constant cache is sliced, the present_key/value
    outputs carry the KV heads; a cache that is a graph input (onnxruntime-genai's
    past_key_values.N.key/value) stops the heads, unless --prune-kv-cache lets the
    cache inputs and outputs lose them together (`_cache_input`). cos/sin caches and q/k
    norm weights are per position within a head: they stay. A per-head attention bias,
    head sink or per-channel KV scale is sliced."""
    heads, kv_heads = int(ctx.attr("num_heads", 0)), int(ctx.attr("kv_num_heads", 0))
    tracked = dict(ctx.tracked())
    packed = not ctx.node.input[1:2] or not ctx.node.input[1]
    needed = (0,) if packed else (0, 1, 2)
    if heads < 1 or kv_heads < 1 or heads % kv_heads:
        ctx.block("num_heads is not a multiple of kv_num_heads")
        return
    if any(index not in needed for index in tracked):
        ctx.block("channels reach the cache, sequence lengths or per-head inputs")
        return
    if any(tracked.get(i) is None or tracked[i].axis != 2 for i in needed):
        ctx.block("query, key and value must carry the channels on their last axis")
        return
    atoms = np.concatenate([tracked[i].atoms for i in needed])
    if atoms.size % (heads + 2 * kv_heads) or (
        not packed and tracked[0].size * kv_heads != tracked[1].size * heads
    ):
        ctx.block("query, key and value do not split into heads of one size")
        return
    size = atoms.size // (heads + 2 * kv_heads)
    q, k, v = np.split(atoms, [heads * size, (heads + kv_heads) * size])
    q_heads, k_heads, v_heads = (x.reshape(-1, size) for x in (q, k, v))
    for block in (q_heads, k_heads, v_heads):
        for head in block:
            ctx.couple_all(head)
    kv_atoms, q_atoms = k_heads[:, 0], q_heads[:, 0]
    ctx.couple(kv_atoms, v_heads[:, 0])
    ctx.couple(np.repeat(kv_atoms, heads // kv_heads), q_atoms)
    ctx.mark_heads(kv_atoms)
    for index, atoms_at, axis in (
        (_PAST_KEY, kv_atoms, 1), (_PAST_VALUE, kv_atoms, 1), (_ATTENTION_BIAS, q_atoms, 1),
        (_HEAD_SINK, q_atoms, 0), (_K_SCALE, kv_atoms, 1), (_V_SCALE, kv_atoms, 1),
    ):  # fmt: skip
        if not _slice_per_head(ctx, index, axis, atoms_at):
            return
    ctx.set_count(ctx.target(attribute="num_heads"), q_atoms)
    ctx.set_count(ctx.target(attribute="kv_num_heads"), kv_atoms)
    ctx.emit(0, Layout(2, q))
    ctx.emit(1, Layout(1, kv_atoms))
    ctx.emit(2, Layout(1, kv_atoms))
    ctx.emit(3, Layout(1, q_atoms))


def _slice_per_head(ctx: Context, index: int, axis: int, heads: np.ndarray) -> bool:
    """An optional input with one entry per head on `axis`: a constant is sliced; one that
    broadcasts (1 there) needs nothing; a graph input or a computed one stops the heads."""
    name = ctx.view.input(ctx.node, index)
    if name is None:
        return True
    shape = ctx.input_shape(index)
    if shape is not None and (len(shape) <= axis or shape[axis] == 1):
        return True
    if index in (_PAST_KEY, _PAST_VALUE) and name in ctx.view.graph_inputs:
        return _cache_input(ctx, index, axis, heads, name)
    if shape is None or ctx.constant(index) is None:
        source = "a graph input" if name in ctx.view.graph_inputs else "computed at runtime"
        ctx.block(f"per-head input {name!r} is {source}: its heads cannot be removed")
        return False
    ctx.slice(index, axis, heads)
    return True


def _cache_input(ctx: Context, index: int, axis: int, heads: np.ndarray, name: str) -> bool:
    """A KV cache the caller feeds (onnxruntime-genai's past_key_values.N.key/value): with
    --prune-kv-cache it loses the removed heads, and so do the present outputs that
    carry them (`graphprune.core.analysis`); the caller's cache is that much narrower."""
    if not ctx.prune_cache:
        ctx.block(
            f"KV cache {name!r} is a graph input: its heads go only with the cache",
            option="--prune-kv-cache",
        )
        return False
    shape = ctx.input_shape(index)
    others = [node.name for node, _ in ctx.view.consumers(name) if node is not ctx.node]
    size = None if shape is None or len(shape) <= axis else shape[axis]
    if others or shape is None or (isinstance(size, int) and size != heads.size):
        why = f"also read by '{others[0]}'" if others else "not one entry per KV head"
        ctx.block(f"KV cache {name!r} is {why}")
        return False
    ctx.cache_input(index, axis, heads)
    return True


@rule("RotaryEmbedding", domain="com.microsoft")
def rotary_embedding(ctx: Context) -> None:
    """com.microsoft.RotaryEmbedding (input, position_ids, cos_cache, sin_cache)."""
    _rotary(ctx, cos_index=2)


@rule("RotaryEmbedding")
def onnx_rotary_embedding(ctx: Context) -> None:
    """onnx RotaryEmbedding, opset 23 (X, cos_cache, sin_cache, position_ids)."""
    _rotary(ctx, cos_index=1)


def _rotary(ctx: Context, *, cos_index: int) -> None:
    """Rotates the first rotary_embedding_dim positions of each head (halves, or even and
    odd positions when interleaved) by the angle of the token's position; the caches hold
    one angle per rotated pair, the same for every head. 4-D input [B, H, S, D]: heads
    pass on axis 1. 3-D input [B, S, H*D]: the positions of a head are coupled (a rotation
    mixes them; a rotary dim is never split) and num_heads counts the heads that stay;
    without num_heads the head size is twice the cache width."""
    x = ctx.data_layout()
    shape = ctx.input_shape(0)
    if x is None:
        return
    if len(shape) == 4 and x.axis == 1:
        ctx.emit(0, x)
        return
    heads = int(ctx.attr("num_heads", 0))
    cache = ctx.input_shape(cos_index)
    if len(shape) != 3 or x.axis != 2:
        ctx.block("channels within a head: a rotary dim cannot be split")
        return
    if heads < 1 and (int(ctx.attr("rotary_embedding_dim", 0)) or not cache):
        ctx.block("num_heads is not given")
        return
    size = x.size // heads if heads else 2 * int(cache[-1])
    if size < 1 or x.size % size:
        ctx.block("the input does not split into heads")
        return
    per_head = x.atoms.reshape(-1, size)
    for head in per_head:
        ctx.couple_all(head)
    if heads:
        ctx.set_count(ctx.target(attribute="num_heads"), per_head[:, 0])
    ctx.emit(0, x)
