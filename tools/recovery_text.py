"""Real English text of two kinds, read offline from the installed Python packages, for
distillation benchmarks: fit on one kind, judge on the other.

* ``docstrings``: sentences of the docstrings of installed modules (numpy, scipy,
  scikit-learn, transformers, torch, ...): terse technical prose about code;
* ``descriptions``: sentences of the package descriptions (the README text that every
  ``*.dist-info/METADATA`` carries): prose for people choosing a package.

Both are filtered to plain sentences (6-40 words, few symbols, no code), de-duplicated,
and shuffled with a seed; a sentence in both kinds is dropped from ``descriptions``.

    from recovery_text import sentences
    fit, held_out = sentences("docstrings", 5000), sentences("descriptions", 500)
"""

from __future__ import annotations

import ast
import importlib.metadata
import re
import sysconfig
from functools import cache
from pathlib import Path

import numpy as np

KINDS = ("docstrings", "descriptions")
PACKAGES = ("numpy", "scipy", "sklearn", "transformers", "torch", "onnx", "pandas", "ray",
            "sympy", "networkx", "tqdm", "timm", "email", "http", "json", "logging")  # fmt: skip
_SPLIT = re.compile(r"(?<=[.!?])\s+(?=[A-Z])")
_WORD = re.compile(r"^[A-Za-z][A-Za-z'\-]*[,;:.!?]?$")


def sentences(kind: str, count: int, seed: int = 0) -> list[str]:
    found = _docstrings() if kind == "docstrings" else _descriptions()
    if kind == "descriptions":
        found = sorted(set(found) - set(_docstrings()))
    order = np.random.default_rng(seed).permutation(len(found))
    return [found[i] for i in order[:count]]


def _plain(text: str) -> list[str]:
    """The plain sentences of a paragraph of prose."""
    text = " ".join(text.split())
    out = []
    for sentence in _SPLIT.split(text):
        words = sentence.split()
        if not 6 <= len(words) <= 40 or not sentence.endswith("."):
            continue
        wordy = sum(bool(_WORD.match(w)) for w in words)
        if wordy >= 0.9 * len(words) and not re.search(r"[`*_#<>=\[\]{}|\\/@]", sentence):
            out.append(sentence)
    return out


@cache
def _docstrings() -> list[str]:
    roots = [Path(sysconfig.get_paths()["purelib"]), Path(sysconfig.get_paths()["stdlib"])]
    found: set[str] = set()
    for package in PACKAGES:
        folders = [root / package for root in roots if (root / package).is_dir()]
        for folder in folders:
            for path in sorted(folder.rglob("*.py")):
                try:
                    tree = ast.parse(path.read_text(encoding="utf-8"))
                except (SyntaxError, UnicodeDecodeError, ValueError):
                    continue
                for node in ast.walk(tree):
                    if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef)):
                        doc = ast.get_docstring(node)
                        if doc:  # the prose before the first blank line (not parameters)
                            found.update(_plain(doc.split("\n\n")[0]))
    return sorted(found)


@cache
def _descriptions() -> list[str]:
    found: set[str] = set()
    for dist in sorted(importlib.metadata.distributions(), key=lambda d: d.metadata["Name"] or ""):
        body = dist.metadata.get_payload() or dist.metadata.get("Description") or ""
        for paragraph in str(body).split("\n\n"):
            if paragraph.lstrip().startswith(("    ", "```", ">>>", "|", "-", "*", "#", "..")):
                continue  # code, tables, lists and headings are not sentences
            found.update(_plain(paragraph))
    return sorted(found)


if __name__ == "__main__":
    for kind in KINDS:
        chosen = sentences(kind, 5)
        print(f"{kind}: {len(_docstrings() if kind == 'docstrings' else _descriptions())} "
              "sentences, e.g.")
        for text in chosen:
            print("   ", text)
