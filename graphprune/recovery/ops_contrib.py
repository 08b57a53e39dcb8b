"""onnxruntime's contrib ops (domain com.microsoft) that its transformer optimizer writes:
fused GELUs, skip layer norms, BERT's embedding layer norm and the Attention and
MultiHeadAttention ops without a key/value cache. Semantics as onnxruntime's
ContribOperators.md states them; anything else there is refused by name."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .registry import op

MS = "com.microsoft"


@op("BiasGelu", domain=MS)
def bias_gelu(node, x, bias):
    return F.gelu(x + bias)


@op("FastGelu", domain=MS)
def fast_gelu(node, x, bias=None):
    return F.gelu(x if bias is None else x + bias, approximate="tanh")


@op("QuickGelu", domain=MS)
def quick_gelu(node, x):
    return x * torch.sigmoid(node.attr("alpha", 1.702) * x)


@op("BiasAdd", domain=MS)
def bias_add(node, x, bias, skip):
    return x + bias + skip


def _layer_norm(x, gamma, beta, eps):
    mean = x.mean(-1, keepdim=True)
    inv = torch.rsqrt(((x - mean) ** 2).mean(-1, keepdim=True) + eps)
    return (x - mean) * inv * gamma + (0 if beta is None else beta), mean, inv


@op("SkipLayerNormalization", domain=MS, scalar_weights=True)
def skip_layer_norm(node, x, skip, gamma, beta=None, bias=None):
    total = x + skip + (0 if bias is None else bias)
    out, mean, inv = _layer_norm(total, gamma, beta, node.attr("epsilon", 1e-12))
    return (out, mean, inv, total)[: node.outputs()] if node.outputs() > 1 else out


@op("SkipSimplifiedLayerNormalization", domain=MS, scalar_weights=True)
def skip_simplified_layer_norm(node, x, skip, gamma, bias=None):
    total = x + skip + (0 if bias is None else bias)
    inv = torch.rsqrt((total * total).mean(-1, keepdim=True) + node.attr("epsilon", 1e-12))
    out = total * inv * gamma
    return (out, None, inv, total)[: node.outputs()] if node.outputs() > 1 else out


@op("EmbedLayerNormalization", domain=MS, scalar_weights=True, tables=(2, 3, 4))
def embed_layer_norm(node, ids, segments, words, positions, segment_table, gamma, beta,
                     mask=None, position_ids=None):  # fmt: skip
    ids = ids.long()
    if position_ids is None:
        position_ids = torch.arange(ids.shape[1], device=ids.device).expand_as(ids)
    total = words[ids] + positions[position_ids.long()]
    if segments is not None and segment_table is not None:
        total = total + segment_table[segments.long()]
    out, _, _ = _layer_norm(total, gamma, beta, node.attr("epsilon", 1e-12))
    if mask is None:
        lengths = torch.zeros(ids.shape[0], dtype=torch.int32, device=ids.device)
    else:
        lengths = mask.to(torch.int32).sum(1, dtype=torch.int32)
    return (out, lengths, total)[: node.outputs()]


def _key_mask(node, mask, batch, keys, device):
    """Additive mask [batch, 1, 1 or queries, keys] from onnxruntime's mask_index forms."""
    if mask is None:
        return None
    filler = node.attr("mask_filter_value", -10000.0)
    if mask.dim() == 1 and mask.shape[0] == batch:  # valid lengths, right padding
        keep = torch.arange(keys, device=device)[None, :] < mask.long()[:, None]
        return torch.where(keep, 0.0, filler)[:, None, None, :]
    if mask.dim() == 2:  # raw 0/1 mask over the keys
        return ((1 - mask.float()) * filler)[:, None, None, :]
    if mask.dim() == 3:
        return ((1 - mask.float()) * filler)[:, None, :, :]
    raise node.refuse(f"mask_index of shape {list(mask.shape)} is not supported")


def _attend(node, q, k, v, heads, mask, bias=None):
    """Scaled dot-product attention of [B, S, heads*H] projections -> [B, S, heads*Hv]."""
    batch, queries, keys = q.shape[0], q.shape[1], k.shape[1]

    def split(t):
        return t.reshape(batch, t.shape[1], heads, -1).transpose(1, 2)

    q, k, v = split(q), split(k), split(v)
    scale = node.attr("scale", 0.0) or 1.0 / math.sqrt(q.shape[-1])
    scores = torch.matmul(q, k.transpose(-1, -2)) * scale
    additive = _key_mask(node, mask, batch, keys, q.device)
    if additive is not None:
        scores = scores + additive
    if bias is not None:
        scores = scores + bias
    if node.attr("unidirectional", 0):
        causal = torch.ones(queries, keys, dtype=torch.bool, device=q.device).tril(keys - queries)
        scores = scores.masked_fill(~causal, torch.finfo(scores.dtype).min)
    out = torch.matmul(torch.softmax(scores, -1), v)
    return out.transpose(1, 2).reshape(batch, queries, -1)


@op("Attention", domain=MS, scalar_weights=True)
def attention(node, x, weights, bias=None, mask=None, past=None, attention_bias=None,
              past_length=None):  # fmt: skip
    if past is not None or node.outputs() > 1 or node.attr("do_rotary", 0):
        raise node.refuse("a key/value cache (past/present) or rotary is not supported")
    heads = node.attr("num_heads")
    qkv = torch.matmul(x, weights) + (0 if bias is None else bias)
    sizes = node.attr("qkv_hidden_sizes") or [weights.shape[1] // 3] * 3
    q, k, v = torch.split(qkv, list(sizes), -1)
    return _attend(node, q, k, v, heads, mask, attention_bias)


@op("MultiHeadAttention", domain=MS, scalar_weights=True)
def multi_head_attention(node, q, k=None, v=None, bias=None, mask=None, attention_bias=None,
                         past_key=None, past_value=None, *rest):  # fmt: skip
    if past_key is not None or node.outputs() > 1:
        raise node.refuse("a key/value cache (past/present) is not supported")
    heads = node.attr("num_heads")
    if k is None and q.dim() == 5:  # packed QKV [B, S, heads, 3, H]
        q, k, v = (q[:, :, :, i].flatten(2) for i in range(3))
    elif k is None or v is None or k.dim() != 3 or v.dim() != 3:
        raise node.refuse("only separate 3-D query/key/value or packed QKV are supported")
    if bias is not None:
        d, dv = q.shape[-1], v.shape[-1]
        q, k, v = q + bias[:d], k + bias[d : 2 * d], v + bias[2 * d : 2 * d + dv]
    return _attend(node, q, k, v, heads, mask, attention_bias)


def _rotate(x, cos, sin, interleaved: bool):
    """Rotary position embedding of the first 2 * cos.shape[-1] features of `x`."""
    width = 2 * cos.shape[-1]
    rot, rest = x[..., :width], x[..., width:]
    if interleaved:
        a, b = rot[..., 0::2], rot[..., 1::2]
        out = torch.stack([a * cos - b * sin, b * cos + a * sin], -1).flatten(-2)
    else:
        a, b = rot[..., : width // 2], rot[..., width // 2 :]
        out = torch.cat([a * cos - b * sin, b * cos + a * sin], -1)
    return torch.cat([out, rest], -1)


@op("RotaryEmbedding", domain=MS, frozen=(2, 3))
def rotary_embedding(node, x, positions, cos_cache, sin_cache):
    if node.attr("is_packed_batching", 0):
        raise node.refuse("packed batching is not supported")
    three_d = x.dim() == 3
    batch, seq = (x.shape[0], x.shape[1]) if three_d else (x.shape[0], x.shape[2])
    if positions.numel() == 1:  # an offset: positions offset, offset + 1, ...
        positions = positions.reshape(1, 1) + torch.arange(seq, device=x.device)[None, :]
    positions = positions.long().expand(batch, seq)
    cos, sin = cos_cache[positions], sin_cache[positions]  # [B, S, half]
    dim = node.attr("rotary_embedding_dim", 0)
    if dim:
        cos, sin = cos[..., : dim // 2], sin[..., : dim // 2]
    interleaved = bool(node.attr("interleaved", 0))
    if three_d:  # [B, S, heads * H]
        heads = node.attr("num_heads", 0) or x.shape[-1] // (2 * cos_cache.shape[-1])
        grouped = x.reshape(batch, seq, heads, -1)
        return _rotate(grouped, cos[:, :, None], sin[:, :, None], interleaved).reshape(x.shape)
    return _rotate(x, cos[:, None], sin[:, None], interleaved)  # [B, heads, S, H]


@op("GroupQueryAttention", domain=MS, frozen=(7, 8), scalar_weights=True)
def group_query_attention(node, q, k=None, v=None, past_key=None, past_value=None,
                          seqlens=None, total=None, cos_cache=None, sin_cache=None,
                          *rest):  # fmt: skip
    if (past_key is not None and past_key.numel()) or any(r is not None for r in rest):
        raise node.refuse("a key/value cache, position ids or attention bias are not supported")
    if node.attr("smooth_softmax", 0):
        raise node.refuse("smooth_softmax is not supported")
    heads, kv_heads = node.attr("num_heads"), node.attr("kv_num_heads")
    batch, seq = q.shape[:2]
    if k is None:  # one packed QKV projection
        size = q.shape[-1] // (heads + 2 * kv_heads)
        q, k, v = torch.split(q, [heads * size, kv_heads * size, kv_heads * size], -1)
    size = q.shape[-1] // heads
    q = q.reshape(batch, seq, heads, size)
    k, v = k.reshape(batch, seq, kv_heads, size), v.reshape(batch, seq, kv_heads, size)
    if node.attr("do_rotary", 0):
        cos, sin = cos_cache[:seq][None, :, None], sin_cache[:seq][None, :, None]
        interleaved = bool(node.attr("rotary_interleaved", 0))
        q, k = _rotate(q, cos, sin, interleaved), _rotate(k, cos, sin, interleaved)
    q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # [B, heads, S, H]
    present = (k, v)
    k = k.repeat_interleave(heads // kv_heads, 1)
    v = v.repeat_interleave(heads // kv_heads, 1)
    scores = torch.matmul(q, k.transpose(-1, -2)) * (node.attr("scale", 0.0) or size**-0.5)
    cap = node.attr("softcap", 0.0)
    if cap:
        scores = cap * torch.tanh(scores / cap)
    rows = torch.arange(seq, device=q.device)
    keep = rows[None, :] <= rows[:, None]  # causal
    window = node.attr("local_window_size", -1)
    if window >= 0:
        keep = keep & (rows[None, :] > rows[:, None] - window)
    keep = keep[None] & (rows[None, None, :] <= seqlens.long().reshape(-1, 1, 1))
    scores = scores.masked_fill(~keep[:, None], torch.finfo(scores.dtype).min)
    out = torch.matmul(torch.softmax(scores, -1), v).transpose(1, 2).reshape(batch, seq, -1)
    return (out, *present)[: node.outputs()] if node.outputs() > 1 else out
