"""Real English text from what is installed, tokenized for an LLM: calibration and held-out
evaluation from different sources, and perplexity through onnxruntime.

- "docstrings" (calibration): the docstrings of the Python standard library's own modules,
  classes and functions (read with `ast` from the source files, nothing imported), in
  sorted file order;
- "readmes" (evaluation): the long descriptions (the READMEs) of the installed packages'
  metadata, in sorted package order, deduplicated.

Both are cut into sequences of `length` tokens spread evenly over the whole text (not
the first few documents), so the samples cover many sources. The texts depend on what is
installed; `describe` says how many documents and tokens went in, and a hash of the ids.

    python tools/llm_text.py --source readmes --count 8 --length 128   # a summary
"""

from __future__ import annotations

import argparse
import ast
import hashlib
import sys
import sysconfig
from importlib import metadata
from pathlib import Path

import numpy as np
from text_corpus import docstrings_under

SOURCES = ("docstrings", "readmes")
MIN_CHARS = 200  # shorter docstrings and READMEs are mostly signatures and badges


def docstrings() -> list[str]:
    """Docstrings of the standard library (top-level modules and packages, no tests)."""
    root = Path(sysconfig.get_paths()["stdlib"])
    skip = ("test", "tests", "idlelib", "site-packages", "lib2to3")
    nodes = (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)
    return [text for text in docstrings_under(root, skip, nodes) if len(text) >= MIN_CHARS]


def readmes() -> list[str]:
    """The installed distributions' long descriptions, deduplicated, by package name."""
    found: dict[str, str] = {}
    for dist in metadata.distributions():
        name = (dist.metadata.get("Name") or "").lower()
        body = dist.metadata.get_payload() or dist.metadata.get("Description") or ""
        if name and name not in found and len(body) >= MIN_CHARS:
            found[name] = body
    seen: set[str] = set()
    texts = []
    for name in sorted(found):
        if found[name] not in seen:
            seen.add(found[name])
            texts.append(found[name])
    return texts


def documents(source: str) -> list[str]:
    if source == "docstrings":
        return docstrings()
    if source == "readmes":
        return readmes()
    raise SystemExit(f"unknown text source {source!r} (choose from {', '.join(SOURCES)})")


def token_sequences(tokenizer, source: str, count: int, length: int) -> np.ndarray:
    """`count` sequences of `length` token ids (int64), evenly spaced over the source."""
    eos = tokenizer.eos_token_id
    ids: list[int] = []
    for text in documents(source):
        ids += tokenizer(text, add_special_tokens=False)["input_ids"]
        if eos is not None:
            ids.append(eos)
    windows = len(ids) // length
    if windows < count:
        raise SystemExit(f"{source}: {len(ids)} tokens hold only {windows} sequences of {length}")
    starts = np.linspace(0, windows - 1, count).round().astype(int) * length
    return np.stack([np.asarray(ids[s : s + length], dtype=np.int64) for s in starts])


def describe(ids: np.ndarray, source: str) -> dict:
    return {
        "source": source,
        "sequences": int(ids.shape[0]),
        "length": int(ids.shape[1]),
        "sha256": hashlib.sha256(ids.tobytes()).hexdigest()[:16],
    }


def perplexity(session, ids: np.ndarray, batch: int = 4, input_name: str = "input_ids") -> float:
    """exp(mean next-token negative log-likelihood) over all sequences, by onnxruntime."""
    total, count = 0.0, 0
    for start in range(0, ids.shape[0], batch):
        chunk = ids[start : start + batch]
        logits = session.run(None, {input_name: chunk})[0].astype(np.float64)
        logits = logits[:, :-1]
        targets = chunk[:, 1:]
        peak = logits.max(axis=-1, keepdims=True)
        log_norm = np.log(np.exp(logits - peak).sum(axis=-1)) + peak[..., 0]
        picked = np.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
        total += float((log_norm - picked).sum())
        count += targets.size
    return float(np.exp(total / count))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", choices=SOURCES, default="readmes")
    parser.add_argument("--count", type=int, default=8)
    parser.add_argument("--length", type=int, default=128)
    args = parser.parse_args(argv)
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from llm_real import load_tokenizer

    tokenizer = load_tokenizer()
    texts = documents(args.source)
    ids = token_sequences(tokenizer, args.source, args.count, args.length)
    print(f"{len(texts)} documents, {sum(map(len, texts))} characters", describe(ids, args.source))
    print(repr(tokenizer.decode(ids[0][:60])))
    return 0


if __name__ == "__main__":
    sys.exit(main())
