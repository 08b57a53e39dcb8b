"""Module attributes that follow their parameters' sizes: after the parameters are cut,
each layer's recorded sizes (a Conv's channels and groups, a Linear's features, a norm's
width, an attention's head counts, a transformers config's widths) are set from them.

torch.nn layers are known by class; attention modules of transformers and timm by the
names they give their projections and head sizes (they compute the heads with
`view(..., -1, head_dim)` or read `num_heads`; the head size never changes, since heads go
whole, and neither does the softmax scale, 1/sqrt(head size)).
"""

from __future__ import annotations

from typing import Any

from ..errors import GraphpruneError

_HEAD_SIZE = (
    "head_dim",
    "attention_head_size",
    "head_size",
    "key_value_proj_dim",
    "d_kv",
    "dim_head",
)
_QUERY = ("q_proj", "query", "q", "q_lin", "to_q", "wq")
_KEY = ("k_proj", "key", "k", "k_lin", "to_k", "wk")
_FUSED = ("qkv", "c_attn", "query_key_value", "Wqkv", "qkv_proj")  # query, key, value together
_HEADS = ("num_heads", "num_attention_heads", "n_heads", "n_head")
_KV_HEADS = ("num_key_value_heads", "num_kv_heads", "n_kv_heads")
_GROUPS = ("num_key_value_groups", "num_kv_groups")
_WIDTH = ("all_head_size", "attn_dim", "inner_dim", "split_size")
_MLP_UP = ("up_proj", "fc1", "c_fc", "dense_h_to_4h", "lin1", "wi", "intermediate_dense")


def fix_attributes(module: Any) -> None:
    """Set every layer's size attributes from its (cut) parameters."""
    from torch import nn

    heads: list[tuple[int, int]] = []
    widths: list[int] = []
    for _, layer in module.named_modules():
        if isinstance(layer, nn.modules.conv._ConvNd):
            _conv(layer)
        elif isinstance(layer, nn.Linear):
            layer.out_features, layer.in_features = layer.weight.shape
        elif isinstance(layer, nn.Embedding):
            layer.num_embeddings, layer.embedding_dim = layer.weight.shape
        elif isinstance(layer, nn.modules.batchnorm._NormBase):
            layer.num_features = _first_size(layer, ("weight", "running_mean"), layer.num_features)
        elif isinstance(layer, nn.GroupNorm):
            layer.num_channels = _first_size(layer, ("weight",), layer.num_channels)
            if layer.num_channels % layer.num_groups:
                raise GraphpruneError("a GroupNorm keeps channels that its groups cannot share")
        elif isinstance(layer, nn.LayerNorm | getattr(nn, "RMSNorm", nn.LayerNorm)):
            if getattr(layer, "weight", None) is not None:
                layer.normalized_shape = tuple(layer.weight.shape)
        elif isinstance(layer, nn.MultiheadAttention):
            _multihead(layer)
        elif type(layer).__name__ == "Conv1D" and hasattr(layer, "nf"):
            layer.nf = int(layer.weight.shape[1])  # transformers' GPT-2 linear: [in, out]
            if hasattr(layer, "nx"):
                layer.nx = int(layer.weight.shape[0])
        counted = _attention(layer)
        if counted is not None:
            heads.append(counted)
        width = _mlp(layer)
        if width is not None:
            widths.append(width)
    _config(module, heads, widths)


def _first_size(layer, names, default: int) -> int:
    for name in names:
        tensor = getattr(layer, name, None)
        if tensor is not None:
            return int(tensor.shape[0])
    return default


def _conv(layer) -> None:
    """Depthwise convs (one input channel per group) lose groups with their channels; other
    grouped convs keep their groups (each lost the same number of channels)."""
    weight = layer.weight
    transposed = layer.transposed
    per_group = int(weight.shape[0 if transposed else 1])
    depthwise = (
        layer.groups > 1 and layer.groups == layer.in_channels and (transposed or per_group == 1)
    )
    if transposed:
        in_channels = int(weight.shape[0])
        groups = in_channels if depthwise else layer.groups
        layer.in_channels, layer.groups = in_channels, groups
        layer.out_channels = int(weight.shape[1]) * groups
        return
    out_channels = int(weight.shape[0])
    multiplier = layer.out_channels // layer.groups
    groups = out_channels // multiplier if depthwise else layer.groups
    layer.out_channels, layer.groups, layer.in_channels = out_channels, groups, per_group * groups


def _multihead(layer) -> None:
    """torch's MultiheadAttention splits its input width into the heads (one embed_dim for
    queries, heads and output), so it cannot hold fewer heads than its width."""
    width = layer.embed_dim
    shapes = [tuple(layer.out_proj.weight.shape)]
    if layer.in_proj_weight is not None:
        shapes.append(tuple(layer.in_proj_weight.shape))
    if shapes[0] != (width, width) or (len(shapes) > 1 and shapes[1] != (3 * width, width)):
        raise GraphpruneError(
            "torch.nn.MultiheadAttention cannot lose heads or width in place: its forward "
            "splits the input width into the heads"
        )


def _attention(layer) -> tuple[int, int] | None:
    """(query heads, key/value heads) of an attention module, its attributes set."""
    size = next(
        (getattr(layer, n) for n in _HEAD_SIZE if isinstance(getattr(layer, n, None), int)), None
    )
    if not size:
        return None
    query = _out_width(layer, _QUERY)
    key = _out_width(layer, _KEY)
    if query is None:
        fused = _out_width(layer, _FUSED)
        if fused is None:
            return None
        # Grouped-query heads go with their key/value head (as graphprune couples them),
        # so each key/value head still has `group` query heads beside it.
        heads = _count(layer, _HEADS) or 1
        group = max(heads // (_count(layer, _KV_HEADS) or heads), 1)
        if fused % (size * (group + 2)):
            raise GraphpruneError(f"{type(layer).__name__} keeps a part of a head")
        key = fused // (group + 2)
        query = key * group
    if query % size or (key or query) % size:
        raise GraphpruneError(f"{type(layer).__name__} keeps a part of a head")
    q_heads, kv_heads = query // size, (key or query) // size
    _set(layer, _HEADS, q_heads)
    _set(layer, _KV_HEADS, kv_heads)
    _set(layer, _GROUPS, q_heads // kv_heads)
    _set(layer, _WIDTH, query)
    return q_heads, kv_heads


def _count(layer, names) -> int:
    """A head count as the module records it, or its config (Phi-3 reads the config)."""
    for owner in (layer, getattr(layer, "config", None)):
        for name in names:
            if isinstance(getattr(owner, name, None), int):
                return int(getattr(owner, name))
    return 0


def _mlp(layer) -> int | None:
    """The hidden width of an MLP: one that records it (LLaMA's `intermediate_size`), or
    BERT's family's `...Intermediate` (its `dense` is the up projection)."""
    if isinstance(getattr(layer, "intermediate_size", None), int):
        fused = _out_width(layer, ("gate_up_proj",))  # Phi-3: gate and up side by side
        width = fused // 2 if fused is not None else _out_width(layer, _MLP_UP)
        if width is not None:
            layer.intermediate_size = width
        return width
    if type(layer).__name__.endswith("Intermediate"):
        return _out_width(layer, ("dense",))
    return None


def _out_width(layer, names) -> int | None:
    for name in names:
        child = getattr(layer, name, None)
        weight = getattr(child, "weight", None)
        if weight is None or weight.ndim != 2:
            continue
        # transformers' Conv1D holds [in, out]; nn.Linear [out, in]
        return int(weight.shape[1] if type(child).__name__ == "Conv1D" else weight.shape[0])
    return None


def _set(layer, names, value: int) -> None:
    for name in names:
        if isinstance(getattr(layer, name, None), int):
            setattr(layer, name, value)


def _config(module: Any, heads: list[tuple[int, int]], widths: list[int]) -> None:
    """A transformers config records one width for every layer: it follows the layers when
    they all agree (per-layer pruning leaves the per-module attributes to say it)."""
    configs = {
        id(c): c for _, m in module.named_modules() if (c := getattr(m, "config", None)) is not None
    }
    for config in configs.values():
        if heads and len(set(heads)) == 1:
            q_heads, kv_heads = heads[0]
            _set(config, ("num_attention_heads", "n_head", "n_heads", "num_heads"), q_heads)
            _set(config, _KV_HEADS, kv_heads)
        if widths and len(set(widths)) == 1:
            _set(config, ("intermediate_size",), widths[0])
