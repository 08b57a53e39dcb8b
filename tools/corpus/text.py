"""Hugging Face transformers built offline from small configs (2 layers, hidden 64, eager
attention, norms randomised by `models.transformers_zoo.randomize_norms`), exported as
input -> last hidden state, plus the real pretrained all-MiniLM-L6-v2 of the project's zoo.

Text models take token ids [2, 8] (dynamic variants: both axes dynamic); vision
ones pixels [2, 3, 32, 32]; Whisper's encoder log-mel features; Wav2Vec2 raw audio.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import partial
from typing import Any

from .registry import BASE, Built, Entry
from .vision import import_torchvision

HIDDEN, HEADS, LAYERS, MLP = 64, 4, 2, 128
VOCAB = 100
SEQUENCE = 8
TOKENS = {"pad_token_id": 0, "bos_token_id": 0, "eos_token_id": 0}
DECODER = {"attn_implementation": "eager", "use_cache": False, "max_position_embeddings": 64}
LLAMA_LIKE = {
    "vocab_size": VOCAB, "hidden_size": HIDDEN, "num_hidden_layers": LAYERS,
    "num_attention_heads": HEADS, "num_key_value_heads": 2, "intermediate_size": MLP,
    **TOKENS, **DECODER,
}  # fmt: skip
BERT_LIKE = {
    "vocab_size": VOCAB, "hidden_size": HIDDEN, "num_hidden_layers": LAYERS,
    "num_attention_heads": HEADS, "intermediate_size": MLP, "max_position_embeddings": 64,
    "attn_implementation": "eager",
}  # fmt: skip
VISION = {
    "hidden_size": HIDDEN, "num_hidden_layers": LAYERS, "num_attention_heads": HEADS,
    "intermediate_size": MLP, "image_size": 32, "patch_size": 8, "attn_implementation": "eager",
}  # fmt: skip


@dataclass(frozen=True)
class Spec:
    """A transformers family: model class, config class and the config's arguments."""

    model: str
    config: str
    kwargs: dict[str, Any] = field(default_factory=dict)
    key: str = "input_ids"  # the model's input
    shape: tuple[int, ...] = (2, SEQUENCE)
    ort_type: str | None = None  # optimize_model model type (gets the ortopt variant)
    extra: tuple[str, ...] = ()  # variants beyond BASE + dynamic
    encoder_only: bool = False  # export model.get_encoder() (Whisper)


# Examples have batch 2: a dynamic axis exported from an example of size 1 can come out
# specialised to 1 (LLaMA's rotary embedding then fails at batch 2).
PIXELS = (2, 3, 32, 32)
MORE = ("classic-op13", "classic-op20", "fp16", "onnxsim")
SPECS: dict[str, Spec] = {
    "bert": Spec("BertModel", "BertConfig", BERT_LIKE, ort_type="bert", extra=MORE),
    "roberta": Spec("RobertaModel", "RobertaConfig", {**BERT_LIKE, "pad_token_id": 1},
                    ort_type="bert"),
    "distilbert": Spec("DistilBertModel", "DistilBertConfig", {
        "vocab_size": VOCAB, "dim": HIDDEN, "n_layers": LAYERS, "n_heads": HEADS,
        "hidden_dim": MLP, "max_position_embeddings": 64, "attn_implementation": "eager",
    }, ort_type="bert"),
    "albert": Spec("AlbertModel", "AlbertConfig", {**BERT_LIKE, "embedding_size": 32}),
    "electra": Spec("ElectraModel", "ElectraConfig", {**BERT_LIKE, "embedding_size": 32}),
    "gpt2": Spec("GPT2Model", "GPT2Config", {
        "vocab_size": VOCAB, "n_embd": HIDDEN, "n_layer": LAYERS, "n_head": HEADS,
        "n_positions": 64, "use_cache": False, "attn_implementation": "eager", **TOKENS,
    }, ort_type="gpt2", extra=MORE),
    "gpt_neox": Spec("GPTNeoXModel", "GPTNeoXConfig", {
        "vocab_size": VOCAB, "hidden_size": HIDDEN, "num_hidden_layers": LAYERS,
        "num_attention_heads": HEADS, "intermediate_size": MLP, **TOKENS, **DECODER,
    }),
    "opt": Spec("OPTModel", "OPTConfig", {
        "vocab_size": VOCAB, "hidden_size": HIDDEN, "num_hidden_layers": LAYERS,
        "num_attention_heads": HEADS, "ffn_dim": MLP, "word_embed_proj_dim": HIDDEN,
        "pad_token_id": 1, "bos_token_id": 2, "eos_token_id": 2, **DECODER,
    }),
    "llama": Spec("LlamaModel", "LlamaConfig", LLAMA_LIKE, extra=MORE),
    "mistral": Spec("MistralModel", "MistralConfig", LLAMA_LIKE),
    "qwen2": Spec("Qwen2Model", "Qwen2Config", LLAMA_LIKE),
    "qwen3": Spec("Qwen3Model", "Qwen3Config", {**LLAMA_LIKE, "head_dim": 16}),
    "phi3": Spec("Phi3Model", "Phi3Config", LLAMA_LIKE),
    "gemma": Spec("GemmaModel", "GemmaConfig", {**LLAMA_LIKE, "head_dim": 16}),
    "t5_encoder": Spec("T5EncoderModel", "T5Config", {
        "vocab_size": VOCAB, "d_model": HIDDEN, "d_kv": 16, "d_ff": MLP, "num_layers": LAYERS,
        "num_heads": HEADS, "decoder_start_token_id": 0, "attn_implementation": "eager",
        **TOKENS,
    }),
    "clip_text": Spec("CLIPTextModel", "CLIPTextConfig", {
        **BERT_LIKE, "pad_token_id": 1, "bos_token_id": 0, "eos_token_id": 2,
    }),
    "vit": Spec("ViTModel", "ViTConfig", VISION, "pixel_values", PIXELS, extra=MORE),
    "deit": Spec("DeiTModel", "DeiTConfig", VISION, "pixel_values", PIXELS),
    "clip_vision": Spec("CLIPVisionModel", "CLIPVisionConfig", VISION, "pixel_values", PIXELS),
    "swin": Spec("SwinModel", "SwinConfig", {
        "image_size": 32, "patch_size": 2, "embed_dim": 32, "depths": [1, 1],
        "num_heads": [2, 4], "window_size": 4, "attn_implementation": "eager",
    }, "pixel_values", PIXELS),
    "convnext": Spec("ConvNextModel", "ConvNextConfig", {
        "hidden_sizes": [16, 32, 64, 128], "depths": [1, 1, 1, 1],
    }, "pixel_values", PIXELS),
    "whisper_encoder": Spec("WhisperModel", "WhisperConfig", {
        "vocab_size": VOCAB, "d_model": HIDDEN, "encoder_layers": LAYERS,
        "encoder_attention_heads": HEADS, "encoder_ffn_dim": MLP, "decoder_layers": 1,
        "decoder_attention_heads": HEADS, "decoder_ffn_dim": MLP, "num_mel_bins": 16,
        "max_source_positions": 32, "max_target_positions": 32, "decoder_start_token_id": 0,
        "attn_implementation": "eager", **TOKENS,
    }, "input_features", (2, 16, 64), encoder_only=True),
    "wav2vec2": Spec("Wav2Vec2Model", "Wav2Vec2Config", {
        "vocab_size": VOCAB, "hidden_size": HIDDEN, "num_hidden_layers": LAYERS,
        "num_attention_heads": HEADS, "intermediate_size": MLP, "conv_dim": (32, 32),
        "conv_stride": (5, 2), "conv_kernel": (10, 3), "num_conv_pos_embeddings": 16,
        "num_conv_pos_embedding_groups": 4, "attn_implementation": "eager",
    }, "input_values", (2, 1600)),
}  # fmt: skip


def _example(spec: Spec) -> Any:
    import torch

    generator = torch.Generator().manual_seed(11)
    if spec.key == "input_ids":
        return torch.randint(0, VOCAB, spec.shape, generator=generator)
    return torch.randn(spec.shape, generator=generator)


def _dynamic(spec: Spec, name: str) -> dict[str, dict[int, str]]:
    axes = {0: "batch", 1: "sequence"} if spec.key == "input_ids" else {0: "batch"}
    return {name: axes}


def _build(family: str) -> Built:
    import torch

    import_torchvision()  # transformers imports torchvision, which needs the CPU shim
    import transformers

    from models.transformers_zoo import LastHiddenState, randomize_norms

    spec = SPECS[family]
    torch.manual_seed(0)
    config = getattr(transformers, spec.config)(**spec.kwargs)
    model = getattr(transformers, spec.model)(config).eval()
    if spec.encoder_only:
        model = model.get_encoder()
    module = LastHiddenState(randomize_norms(model), key=spec.key).eval()
    return Built(
        module, (_example(spec),), ("input",), _dynamic(spec, "input"), spec.ort_type, HEADS, HIDDEN
    )


def _minilm() -> Built:
    import_torchvision()
    from models.transformers_zoo import TRANSFORMERS, example_input

    entry = TRANSFORMERS["minilm"]
    spec = SPECS["bert"]
    return Built(
        entry.build(),
        (example_input("minilm", (2, SEQUENCE)),),
        ("input",),
        _dynamic(spec, "input"),
        "bert",
        entry.heads,
        384,
    )


def transformers_entries() -> list[Entry]:
    # Every family is dynamically quantized too: the form transformers ship in most often.
    dynamic = ("classic-dyn", "dynamo-dyn", "dynquant")
    entries = []
    for family, spec in SPECS.items():
        variants = BASE + dynamic + spec.extra + (("ortopt",) if spec.ort_type else ())
        entries.append(
            Entry(
                f"transformers/{family}", "transformers", family, variants, partial(_build, family)
            )
        )
    entries.append(
        Entry(
            "transformers/minilm",
            "transformers",
            "minilm-pretrained",
            BASE + dynamic + ("ortopt", "fp16"),
            _minilm,
        )
    )
    return entries
