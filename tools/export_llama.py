"""Export a real transformers LLaMA past 2 GB with torch's dynamo exporter, for the LLM-scale
benchmark (BENCHMARKS.md, "LLM scale"): `LlamaForCausalLM` built from a config (seeded
random weights; nothing is downloaded), float32, logits as the output, weights in one
external-data file next to the model.

The default is about 850M parameters (3.4 GB): hidden 2048, 16 layers, 32 query and 8
key-value heads, MLP 5632, vocabulary 32000. Exporting holds the torch model and the
exporter's copy of it, several gigabytes.

    python tools/export_llama.py --out /tmp/llama850m          # writes llama.onnx(.data)
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def export(out: Path, hidden: int, layers: int, heads: int, kv_heads: int, mlp: int,
           vocab: int, sequence: int) -> Path:  # fmt: skip
    sys.path.insert(0, str(REPO))
    from models.torchvision_cpu import import_torchvision

    import_torchvision()  # transformers must import after it (a CUDA torchvision wheel)
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=vocab, hidden_size=hidden, num_hidden_layers=layers,
        num_attention_heads=heads, num_key_value_heads=kv_heads, intermediate_size=mlp,
        max_position_embeddings=max(2048, sequence), use_cache=False,
        attn_implementation="eager",
    )  # fmt: skip
    model = LlamaForCausalLM(config).eval()

    class Logits(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, input_ids):
            return self.model(input_ids=input_ids).logits

    params = sum(p.numel() for p in model.parameters())
    print(f"LlamaForCausalLM: {params / 1e9:.3f} B parameters, float32", flush=True)
    ids = torch.randint(0, vocab, (1, sequence))
    out.mkdir(parents=True, exist_ok=True)
    path = out / "llama.onnx"
    started = time.perf_counter()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(Logits(), (ids,), dynamo=True, external_data=True,
                                    input_names=["input_ids"], output_names=["logits"])  # fmt: skip
        assert program is not None
        program.save(str(path), external_data=True)
    print(f"exported to {path} in {time.perf_counter() - started:.0f} s", flush=True)
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="folder for llama.onnx and its data")
    parser.add_argument("--hidden", type=int, default=2048)
    parser.add_argument("--layers", type=int, default=16)
    parser.add_argument("--heads", type=int, default=32)
    parser.add_argument("--kv-heads", type=int, default=8)
    parser.add_argument("--mlp", type=int, default=5632)
    parser.add_argument("--vocab", type=int, default=32000)
    parser.add_argument("--sequence", type=int, default=16, help="the example input's length")
    args = parser.parse_args(argv)
    export(Path(args.out), args.hidden, args.layers, args.heads, args.kv_heads, args.mlp,
           args.vocab, args.sequence)  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
