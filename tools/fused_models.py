"""Transformers as onnxruntime's transformer optimizer ships them: the small BERT, GPT-2
and ViT of models/transformers_zoo.py and the real all-MiniLM-L6-v2, exported by the
classic torch exporter with an attention mask input (text models; the optimizer's
attention and embedding fusions match that graph), then fused by
`onnxruntime.transformers.optimizer.optimize_model`.

At onnxruntime 1.31 the optimizer writes for BERT and MiniLM: EmbedLayerNormalization,
Attention, SkipLayerNormalization, BiasGelu; for GPT-2: SkipLayerNormalization and
FastGelu (its attention fusion needs a KV cache); for ViT: SkipLayerNormalization and
BiasGelu. FusionOptions vary it: use_multi_head_attention writes MultiHeadAttention
(separate Q, K, V after the projections) instead of Attention, enable_gelu_approximation
FastGelu instead of BiasGelu. The dynamo exporter's graphs (and mask-free exports) get
only the norm and GELU fusions.

LLaMA and Qwen2 as onnxruntime-genai's model builder (Olive's LLM path) writes them,
built here from the transformers model with onnx.helper (the builder is no dependency):
SimplifiedLayerNormalization and SkipSimplifiedLayerNormalization, GroupQueryAttention
(causal, seqlens_k and total_sequence_length from the attention mask) fed either by
separate Q, K, V projections through com.microsoft RotaryEmbedding or by one packed QKV
projection with the rotation inside (do_rotary), SiLU as x * Sigmoid(x). The prompt
graph: no KV cache (a cache that is a graph input keeps the heads, see the report).

The raw dynamo exports as onnxruntime's own graph optimizer saves them
(`SessionOptions.optimized_model_filepath` at ORT_ENABLE_EXTENDED, CPU: FusedMatMul for
Q @ K^T, SkipLayerNormalization, BiasGelu, FastGelu, QuickGelu for SiLU).

    python tools/fused_models.py --out DIR      # writes NAME.fused.onnx for each
"""

from __future__ import annotations

import argparse
import hashlib
import io
import logging
import sys
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import onnx  # noqa: E402
import torch  # noqa: E402

from models.export import OPSET, cached_build, normalize, source_fingerprint  # noqa: E402
from models.transformers_zoo import (  # noqa: E402
    TRANSFORMERS,
    VOCAB,
    LastHiddenState,
    example_input,
    randomize_norms,
)
from models.transformers_zoo import cached as zoo_cached  # noqa: E402

MS = "com.microsoft"


@dataclass(frozen=True)
class FusedEntry:
    base: str  # the models/transformers_zoo.py entry
    model_type: str  # optimize_model's model_type, "genai" (built here), or "ort" (session)
    hidden: int
    packed: bool = False  # genai: one packed QKV projection, rotation inside attention
    options: tuple[str, ...] = ()  # FusionOptions flags set (use_multi_head_attention, ...)
    cache: bool = False  # genai: the KV cache as graph inputs and outputs (decoding)

    @property
    def has_mask(self) -> bool:
        """Text models take an attention mask, except the session-optimized raw exports."""
        return TRANSFORMERS[self.base].is_text and self.model_type != "ort"


FUSED: dict[str, FusedEntry] = {
    "bert": FusedEntry("bert", "bert", 64),
    "bert_mha": FusedEntry("bert", "bert", 64, options=("use_multi_head_attention",)),
    "bert_fastgelu": FusedEntry("bert", "bert", 64, options=("enable_gelu_approximation",)),
    "gpt2": FusedEntry("gpt2", "gpt2", 64),
    "vit": FusedEntry("vit", "vit", 64),
    "minilm": FusedEntry("minilm", "bert", 384),
    "llama_gqa": FusedEntry("llama", "genai", 64),
    "qwen2_gqa_packed": FusedEntry("qwen2", "genai", 64, packed=True),
    "llama_gqa_cache": FusedEntry("llama", "genai", 64, cache=True),
    "bert_ort": FusedEntry("bert", "ort", 64),
    "gpt2_ort": FusedEntry("gpt2", "ort", 64),
    "llama_ort": FusedEntry("llama", "ort", 64),
    "vit_ort": FusedEntry("vit", "ort", 64),
}


class WithMask(torch.nn.Module):
    """input ids and attention mask -> last hidden state."""

    def __init__(self, wrapped: LastHiddenState) -> None:
        super().__init__()
        self.model = wrapped.model

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=ids, attention_mask=mask).last_hidden_state


def export(base: str) -> onnx.ModelProto:
    """Classic export of the zoo model, with a mask input for text models."""
    entry = TRANSFORMERS[base]
    torch.manual_seed(0)
    model = entry.build()
    ids = example_input(base)
    if entry.is_text:
        model = WithMask(model).eval()
        args = (ids, torch.ones_like(ids))
        names = ["input", "mask"]
        axes = {name: {0: "batch", 1: "sequence"} for name in names}
    else:
        args, names, axes = (ids,), ["input"], {"input": {0: "batch"}}
    buffer = io.BytesIO()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model, args, buffer, dynamo=False, opset_version=OPSET, input_names=names,
            output_names=["output"], dynamic_axes=axes,
        )  # fmt: skip
    return normalize(onnx.load_from_string(buffer.getvalue()))


def fuse(name: str) -> onnx.ModelProto:
    from onnxruntime.transformers.fusion_options import FusionOptions
    from onnxruntime.transformers.optimizer import optimize_model

    entry = FUSED[name]
    if entry.model_type == "genai":
        model = decoder(entry.base, entry.packed)
        return genai_decoder(model, packed=entry.packed, cache=entry.cache)
    if entry.model_type == "ort":
        return session_optimized(zoo_cached(entry.base, "dynamo"))
    for logger in ("onnxruntime.transformers", "fusion_base", "onnx_model"):
        logging.getLogger(logger).setLevel(logging.ERROR)
    options = FusionOptions(entry.model_type)
    for flag in entry.options:
        setattr(options, flag, True)
    optimized = optimize_model(
        export(entry.base), model_type=entry.model_type, hidden_size=entry.hidden,
        num_heads=TRANSFORMERS[entry.base].heads, optimization_options=options,
    )  # fmt: skip
    return normalize(optimized.model)


def session_optimized(path: Path) -> onnx.ModelProto:
    """The graph onnxruntime runs on CPU after its extended (hardware-independent) fusions."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    with tempfile.TemporaryDirectory() as folder:
        options.optimized_model_filepath = str(Path(folder) / "optimized.onnx")
        onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        return normalize(onnx.load(options.optimized_model_filepath))


def decoder(base: str, packed: bool) -> torch.nn.Module:
    """The zoo's LLaMA or Qwen2 (8 heads, 4 KV heads), with heads of 16 when packed:
    onnxruntime's CPU GroupQueryAttention rotates only heads of a multiple of 16."""
    import transformers

    kind = {"llama": "Llama", "qwen2": "Qwen2"}[base]
    config = getattr(transformers, f"{kind}Config")(
        vocab_size=VOCAB, hidden_size=64, num_hidden_layers=2, num_attention_heads=8,
        num_key_value_heads=4, intermediate_size=128, max_position_embeddings=64,
        head_dim=16 if packed else 8, use_cache=False, attn_implementation="eager",
    )  # fmt: skip
    torch.manual_seed(0)
    return randomize_norms(getattr(transformers, f"{kind}Model")(config)).eval()


class _Graph:
    """Nodes and initializers, named in order."""

    def __init__(self) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []

    def const(self, name: str, value) -> str:
        array = value.detach().numpy() if isinstance(value, torch.Tensor) else value
        self.initializers.append(onnx.numpy_helper.from_array(array, name))
        return name

    def op(self, op: str, inputs: list[str], name: str, outputs: int = 1, **attrs):
        names = [f"{name}/out{i}" for i in range(outputs)]
        domain = MS if op in ("GroupQueryAttention", "RotaryEmbedding") or "Skip" in op else ""
        self.nodes.append(onnx.helper.make_node(op, inputs, names, name, domain=domain, **attrs))
        return names[0] if outputs == 1 else names


def genai_decoder(model: torch.nn.Module, packed: bool, cache: bool = False) -> onnx.ModelProto:
    """input ids, attention mask -> last hidden state, in the builder's fused ops. With
    `cache`, as the builder writes a decoder: inputs past_key_values.N.key/value [batch,
    KV heads, past, head size] too, the mask covers past and new tokens, the positions
    are the new tokens' (the mask's last columns), and outputs present.N.key/value."""
    import numpy as np

    config, g = model.config, _Graph()
    heads, kv_heads, size = config.num_attention_heads, config.num_key_value_heads, config.head_dim
    eps = float(config.rms_norm_eps)
    mask_sum = g.op("ReduceSum", ["mask", g.const("axis1", np.array([1]))], "mask_sum", keepdims=0)
    one = g.const("one", np.array(1, np.int64))
    seqlens = g.op("Cast", [g.op("Sub", [mask_sum, one], "seqlens")], "seqlens_k", to=6)
    length = g.op("Gather", [g.op("Shape", ["mask"], "mask_shape"), one], "total", axis=0)
    total = g.op("Cast", [length], "total_sequence_length", to=6)
    positions = g.op("Sub", [g.op("CumSum", ["mask", one], "cumsum"), one], "position_ids")
    if cache:  # the new tokens' positions: the mask's last `sequence` columns
        new = g.op("Gather", [g.op("Shape", ["input"], "input_shape"), one], "new", axis=0)
        start = g.op("Neg", [g.op("Unsqueeze", [new, g.const("axis0", np.array([0]))], "s")], "-s")
        end = g.const("end", np.array([np.iinfo(np.int64).max]))
        positions = g.op("Slice", [positions, start, end, "axis1"], "new_positions")
    inv_freq = 1.0 / (config.rope_parameters["rope_theta"] ** (np.arange(0, size, 2) / size))
    angles = np.arange(config.max_position_embeddings)[:, None] * inv_freq[None]
    cos = g.const("cos_cache", np.cos(angles).astype(np.float32))
    sin = g.const("sin_cache", np.sin(angles).astype(np.float32))
    hidden = g.op("Gather", [g.const("embed_tokens", model.embed_tokens.weight), "input"], "embed")
    residual, x = hidden, None
    layers = list(model.layers)
    for index, layer in enumerate(layers):
        norm = g.const(f"layers.{index}.input_layernorm", layer.input_layernorm.weight)
        if x is None:
            x = g.op("SimplifiedLayerNormalization", [hidden, norm], "norm0", epsilon=eps)
        else:
            x, _, _, residual = g.op(
                "SkipSimplifiedLayerNormalization", [x, residual, norm], f"skipnorm{index}.0",
                outputs=4, epsilon=eps,
            )  # fmt: skip
        attn, name = layer.self_attn, f"layers.{index}.attn"
        projections = [attn.q_proj, attn.k_proj, attn.v_proj]
        if packed:
            weight = torch.cat([p.weight for p in projections]).T
            qkv = [g.op("MatMul", [x, g.const(f"{name}.qkv", weight)], f"{name}.qkv")]
            if attn.q_proj.bias is not None:
                bias = g.const(f"{name}.qkv_bias", torch.cat([p.bias for p in projections]))
                qkv = [g.op("Add", [qkv[0], bias], f"{name}.qkv_add")]
            qkv += ["", ""]
            rotary = {"do_rotary": 1}
            caches = [cos, sin]
        else:
            qkv = []
            for part, proj in zip("qkv", projections, strict=True):
                y = g.op("MatMul", [x, g.const(f"{name}.{part}", proj.weight.T)], f"{name}.{part}")
                if proj.bias is not None:
                    bias = g.const(f"{name}.{part}_bias", proj.bias)
                    y = g.op("Add", [y, bias], f"{name}.{part}_add")
                qkv.append(y)
            for part, count in ((0, heads), (1, kv_heads)):
                qkv[part] = g.op(
                    "RotaryEmbedding", [qkv[part], positions, cos, sin], f"{name}.rotary{part}",
                    num_heads=count,
                )  # fmt: skip
            rotary, caches = {}, []
        past = [f"past_key_values.{index}.{kind}" for kind in ("key", "value")]
        y = g.op(
            "GroupQueryAttention", [*qkv, *(past if cache else ["", ""]), seqlens, total, *caches],
            f"{name}.gqa", outputs=3, num_heads=heads, kv_num_heads=kv_heads, **rotary,
        )[0]  # fmt: skip
        del g.nodes[-1].output[1:]  # the present key and value: graph outputs, or none
        if cache:
            g.nodes[-1].output.extend(f"present.{index}.{kind}" for kind in ("key", "value"))
        x = g.op("MatMul", [y, g.const(f"{name}.o", attn.o_proj.weight.T)], f"{name}.o")
        norm = g.const(f"layers.{index}.post_layernorm", layer.post_attention_layernorm.weight)
        x, _, _, residual = g.op(
            "SkipSimplifiedLayerNormalization", [x, residual, norm], f"skipnorm{index}.1",
            outputs=4, epsilon=eps,
        )  # fmt: skip
        mlp, name = layer.mlp, f"layers.{index}.mlp"
        gate = g.op("MatMul", [x, g.const(f"{name}.gate", mlp.gate_proj.weight.T)], f"{name}.gate")
        up = g.op("MatMul", [x, g.const(f"{name}.up", mlp.up_proj.weight.T)], f"{name}.up")
        silu = g.op("Mul", [gate, g.op("Sigmoid", [gate], f"{name}.sigmoid")], f"{name}.silu")
        act = g.op("Mul", [silu, up], f"{name}.act")
        x = g.op("MatMul", [act, g.const(f"{name}.down", mlp.down_proj.weight.T)], f"{name}.down")
    g.op(
        "SkipSimplifiedLayerNormalization", [x, residual, g.const("norm", model.norm.weight)],
        "final_norm", epsilon=eps,
    )  # fmt: skip
    g.nodes[-1].output[0] = "output"
    text = [onnx.helper.make_tensor_value_info(n, onnx.TensorProto.INT64, ["batch", "sequence"])
            for n in ("input", "mask")]  # fmt: skip
    out = onnx.helper.make_tensor_value_info(
        "output", onnx.TensorProto.FLOAT, ["batch", "sequence", config.hidden_size]
    )
    inputs, outputs = text, [out]
    if cache:
        total_dims = {"past": "past_sequence", "present": "total_sequence"}
        for prefix, names in (("past", inputs), ("present", outputs)):
            dims = ["batch", kv_heads, total_dims[prefix], size]
            stem = "past_key_values" if prefix == "past" else "present"
            names.extend(
                onnx.helper.make_tensor_value_info(f"{stem}.{i}.{kind}", 1, dims)  # float
                for i in range(len(layers)) for kind in ("key", "value")
            )  # fmt: skip
        inputs[1] = onnx.helper.make_tensor_value_info(
            "mask", onnx.TensorProto.INT64, ["batch", "total_sequence"]
        )
    graph = onnx.helper.make_graph(g.nodes, "decoder", inputs, outputs, g.initializers)
    opsets = [onnx.helper.make_opsetid("", OPSET), onnx.helper.make_opsetid(MS, 1)]
    return onnx.helper.make_model(graph, opset_imports=opsets, ir_version=8)


def _fingerprint() -> str:
    digest = hashlib.sha256(Path(__file__).read_bytes())
    digest.update(source_fingerprint().encode())
    return digest.hexdigest()[:10]


def cached(name: str) -> Path:
    """Path of the cached fused model, building it if missing (atomically)."""
    return _cached(f"fused-{name}", lambda: fuse(name))


def cached_export(base: str) -> Path:
    """Path of the cached unfused export (with the mask input) the optimizer starts from."""
    return _cached(f"fused-export-{base}", lambda: export(base))


def _cached(stem: str, build) -> Path:
    return cached_build(stem, build, _fingerprint())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", help="default: all")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    for name in args.names or list(FUSED):
        path = args.out / f"{name}.fused.onnx"
        path.write_bytes(fuse(name).SerializeToString(deterministic=True))
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
