"""Transformers as onnxruntime's transformer optimizer ships them: the small BERT, GPT-2
and ViT of models/transformers_zoo.py and the real all-MiniLM-L6-v2, exported by the
classic torch exporter with an attention mask input (text models; the optimizer's
attention and embedding fusions match that graph), then fused by
`onnxruntime.transformers.optimizer.optimize_model`.

At onnxruntime 1.31 the optimizer writes for BERT and MiniLM: EmbedLayerNormalization,
Attention, SkipLayerNormalization, BiasGelu; for GPT-2: SkipLayerNormalization and
FastGelu (its attention fusion needs a KV cache); for ViT: SkipLayerNormalization and
BiasGelu. The dynamo exporter's graphs (and mask-free exports) get only the norm and GELU
fusions.

    python tools/fused_models.py --out DIR      # writes NAME.fused.onnx for each
"""

from __future__ import annotations

import argparse
import hashlib
import io
import logging
import os
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import onnx  # noqa: E402
import torch  # noqa: E402

from models.export import OPSET, cache_dir, normalize, source_fingerprint  # noqa: E402
from models.transformers_zoo import TRANSFORMERS, LastHiddenState, example_input  # noqa: E402


@dataclass(frozen=True)
class FusedEntry:
    base: str  # the models/transformers_zoo.py entry
    model_type: str  # optimize_model's model_type
    hidden: int


FUSED: dict[str, FusedEntry] = {
    "bert": FusedEntry("bert", "bert", 64),
    "gpt2": FusedEntry("gpt2", "gpt2", 64),
    "vit": FusedEntry("vit", "vit", 64),
    "minilm": FusedEntry("minilm", "bert", 384),
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
    from onnxruntime.transformers.optimizer import optimize_model

    entry = FUSED[name]
    for logger in ("onnxruntime.transformers", "fusion_base", "onnx_model"):
        logging.getLogger(logger).setLevel(logging.ERROR)
    optimized = optimize_model(
        export(entry.base), model_type=entry.model_type, hidden_size=entry.hidden,
        num_heads=TRANSFORMERS[entry.base].heads,
    )  # fmt: skip
    return normalize(optimized.model)


def _fingerprint() -> str:
    digest = hashlib.sha256(Path(__file__).read_bytes())
    digest.update(source_fingerprint().encode())
    return digest.hexdigest()[:10]


def cached(name: str) -> Path:
    """Path of the cached fused model, building it if missing (atomically)."""
    path = cache_dir() / f"fused-{name}.{_fingerprint()}.onnx"
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        staging = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        staging.write_bytes(fuse(name).SerializeToString(deterministic=True))
        os.replace(staging, path)
    return path


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
