"""onnxruntime-genai's `genai_config.json` for a pruned decoder: the config says how many
query and KV heads every layer has (`model.decoder.num_attention_heads`,
`num_key_value_heads`) and genai sizes the KV cache it feeds from them, so a prune that
removes heads (with `--prune-kv-cache`) must say the new counts, and the file name of the
new model. genai holds one count for all layers: a plan that keeps different numbers of
heads in different layers cannot be described, and is refused here rather than written
for a runtime that would feed it a cache of the wrong width."""

from __future__ import annotations

import json

import onnx

from ..errors import GraphpruneError


def genai_config(text: str, pruned: onnx.ModelProto, filename: str) -> str:
    """The config `text` rewritten for `pruned` (saved as `filename`)."""
    try:
        config = json.loads(text)
        decoder = config["model"]["decoder"]
    except (ValueError, KeyError, TypeError) as error:
        raise GraphpruneError(f"not an onnxruntime-genai config (model.decoder): {error}") from None
    counts = {
        (_attribute(node, "num_heads"), _attribute(node, "kv_num_heads"))
        for node in pruned.graph.node
        if node.op_type == "GroupQueryAttention"
    }
    if not counts:
        raise GraphpruneError("--genai-config needs a model with GroupQueryAttention nodes")
    if len(counts) > 1:
        found = ", ".join(f"{q}/{kv}" for q, kv in sorted(counts))
        raise GraphpruneError(
            f"layers keep different head counts ({found} query/KV heads) but genai_config.json "
            "holds one: prune heads evenly (--ratio R --only heads, no --global)"
        )
    ((heads, kv_heads),) = counts
    decoder["num_attention_heads"], decoder["num_key_value_heads"] = heads, kv_heads
    decoder["filename"] = filename
    return json.dumps(config, indent=4) + "\n"


def _attribute(node: onnx.NodeProto, name: str) -> int:
    for attribute in node.attribute:
        if attribute.name == name:
            return int(attribute.i)
    raise GraphpruneError(f"'{node.name}' has no {name}")
